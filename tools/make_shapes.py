"""Write the synthetic shapes dataset in COCO 2017 layout: `vitkit make-shapes`, the same options
(vitkit/cli/make_shapes.py)."""

import sys

from vitkit.cli.make_shapes import main

if __name__ == "__main__":
    sys.exit(main(prog="make_shapes.py"))
