"""Per-class precision-recall curves of a COCO detection results file, saved as a PNG.

    python tools/plot_pr.py --annotations GT.json --results RES.json --out pr.png [--backend pycocotools|faster]

Runs COCOeval (bbox) on GT.json as given and plots its accumulated precision array: precision against recall at
IoU 0.5 (left) and averaged over IoU 0.5:0.95 (right), one line per class (area all, 100 detections per image),
each labelled with its AP. Classes without ground truth are left out.

Exit status: 0 on success, 2 for bad input (a missing or malformed file, no detections), with a one-line error.
A thin shell over vitkit.viz.coco_precision and vitkit.viz.plot_pr_curves.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROG = "plot_pr.py"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotations", required=True, help="COCO instances JSON (ground truth)")
    parser.add_argument("--results", required=True, help="COCO results JSON: a list of {image_id, category_id, "
                                                         "bbox, score}")
    parser.add_argument("--out", default="pr_curves.png", help="PNG to write (default: pr_curves.png)")
    parser.add_argument("--backend", choices=("pycocotools", "faster"), default="pycocotools",
                        help="COCOeval implementation (default: pycocotools, the reference)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, evaluate, plot. Returns the exit status."""
    args = build_parser().parse_args(argv)
    for path in (args.annotations, args.results):
        if not Path(path).is_file():
            print(f"{PROG}: error: file not found: {path}", file=sys.stderr)
            return 2
    from vitkit.viz import coco_precision, plot_pr_curves

    try:
        precision, meta = coco_precision(args.annotations, args.results, backend=args.backend)
        out = plot_pr_curves(precision, args.out, rec_thrs=meta["rec_thrs"], iou_thrs=meta["iou_thrs"],
                             class_names=meta["cat_names"])
    except (FileNotFoundError, ValueError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    print(f"precision-recall curves of {len(meta['cat_ids'])} classes: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
