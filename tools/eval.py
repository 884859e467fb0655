"""COCO evaluation of a results file or a checkpoint, and caption metrics: `vitkit eval`, the same options
(vitkit/cli/eval.py)."""

import sys

from vitkit.cli.eval import main

if __name__ == "__main__":
    sys.exit(main(prog="eval.py"))
