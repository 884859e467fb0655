"""Convert Visual Genome's region descriptions to a COCO-layout region-caption set: `vitkit convert-vg`, the same
options (vitkit/cli/convert_vg.py)."""

import sys

from vitkit.cli.convert_vg import main

if __name__ == "__main__":
    sys.exit(main(prog="convert_vg.py"))
