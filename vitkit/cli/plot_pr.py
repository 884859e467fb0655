"""Per-class precision-recall curves of a COCO detection results file, saved as a PNG: ``vitkit plot-pr``
(``tools/plot_pr.py``).

    vitkit plot-pr --annotations GT.json --results RES.json --out pr.png [--backend pycocotools|faster]

Plots precision against recall at IoU 0.5 (left) and averaged over IoU 0.5:0.95 (right), one line per class with
ground truth, labelled with its AP. Exit status: 0 on success, 2 for bad input, with a one-line error."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vitkit.cli.common import command_parser

PROG = "vitkit plot-pr"
EXAMPLES = """examples:
  {prog} --annotations instances_val2017.json --results dets.json --out pr.png
  {prog} --annotations instances_val2017.json --results dets.json --backend faster"""


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The options of ``plot-pr``."""
    parser = command_parser(prog, __doc__, EXAMPLES)
    parser.add_argument("--annotations", required=True, help="COCO instances JSON (ground truth)")
    parser.add_argument("--results", required=True, help="COCO results JSON: a list of {image_id, category_id, "
                                                         "bbox, score}")
    parser.add_argument("--out", default="pr_curves.png", help="PNG to write (default: pr_curves.png)")
    parser.add_argument("--backend", choices=("pycocotools", "faster"), default="pycocotools",
                        help="COCOeval implementation (default: pycocotools, the reference)")
    return parser


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """Evaluate and plot: the exit status (see the module docstring).
    ``argv`` defaults to ``sys.argv[1:]``; ``prog`` names the command in messages."""
    args = build_parser(prog).parse_args(argv)
    for path in (args.annotations, args.results):
        if not Path(path).is_file():
            print(f"{prog}: error: file not found: {path}", file=sys.stderr)
            return 2
    from vitkit.viz import coco_precision, plot_pr_curves  # heavy: imported after parsing so --help stays fast

    try:
        precision, meta = coco_precision(args.annotations, args.results, backend=args.backend)
        out = plot_pr_curves(precision, args.out, rec_thrs=meta["rec_thrs"], iou_thrs=meta["iou_thrs"],
                             class_names=meta["cat_names"])
    except (FileNotFoundError, ValueError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    print(f"precision-recall curves of {len(meta['cat_ids'])} classes: {out}")
    return 0
