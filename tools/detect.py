"""Detect objects in every image of a folder: `vitkit detect`, the same options (vitkit/cli/detect.py)."""

import sys

from vitkit.cli.detect import main

if __name__ == "__main__":
    sys.exit(main(prog="detect.py"))
