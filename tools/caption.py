"""Caption every image of a folder: `vitkit caption`, the same options (vitkit/cli/caption.py)."""

import sys

from vitkit.cli.caption import main

if __name__ == "__main__":
    sys.exit(main(prog="caption.py"))
