"""Detect and caption each object of every image of a folder: `vitkit describe`, the same options
(vitkit/cli/describe.py)."""

import sys

from vitkit.cli.describe import main

if __name__ == "__main__":
    sys.exit(main(prog="describe.py"))
