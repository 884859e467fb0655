"""Per-class precision-recall curves of a COCO results file: `vitkit plot-pr`, the same options
(vitkit/cli/plot_pr.py)."""

import sys

from vitkit.cli.plot_pr import main

if __name__ == "__main__":
    sys.exit(main(prog="plot_pr.py"))
