"""Detect objects in every image of a folder with a detection checkpoint: ``vitkit detect`` (``tools/detect.py``).

    vitkit detect FOLDER --ckpt CKPT [--out dets.json] [--annotations instances_val2017.json]
        [--draw OUTDIR] [--attention OUTDIR] [--score-threshold 0.5] [--batch-size 8]
        [--recursive | --no-recursive] [--device auto|cpu|cuda] [--workers 2]

Writes a COCO results JSON, [{"image_id", "category_id", "bbox": [x, y, w, h], "score"}], bbox in pixels of the
upright original image, category_id the dataset's. Image ids: with --annotations, that file's ids by file_name;
without, the files numbered 1, 2, ... in sorted order. The mapping is written as OUT_STEM.images.json
({"images": [{"id", "file_name", "width", "height"}]}, with "error" on each failed file).

Exit status: 0 every image detected, 3 some failed, 2 usage error, 130 interrupted (nothing is written)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vitkit.cli import common

PROG = "vitkit detect"
EXAMPLES = """exit status: 0 all detected, 3 some failed, 2 usage error

examples:
  {prog} photos/ --ckpt runs/detr_shapes/checkpoints/last.ckpt --out dets.json --draw drawn/
  {prog} data/shapes/val2017 --ckpt last.ckpt --annotations data/shapes/annotations/instances_val2017.json
  {prog} photos/ --ckpt last.ckpt --attention attention/ --score-threshold 0.7 --device cpu"""


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The options of ``detect``."""
    parser = common.command_parser(prog, __doc__, EXAMPLES)
    common.add_folder_and_checkpoint(parser, "detection")
    parser.add_argument("--out", default="dets.json", help="COCO results JSON to write (default: dets.json)")
    parser.add_argument("--annotations", help="COCO instances JSON of the folder's split: take image ids from it")
    parser.add_argument("--draw", metavar="OUTDIR", help="write the images with their boxes drawn under OUTDIR")
    common.add_attention_option(parser, "box")
    parser.add_argument("--score-threshold", type=common.probability, default=0.5,
                        help="keep detections scoring at least this (default: 0.5)")
    common.add_folder_options(parser)
    return parser


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """Detect the folder and print the summary: the exit status (see the module docstring).
    ``argv`` defaults to ``sys.argv[1:]``; ``prog`` names the command in messages."""
    args = build_parser(prog).parse_args(argv)
    # heavy: imported after parsing so --help stays fast
    from vitkit.data.folder import folder_image_ids, list_images
    from vitkit.detection.folder import detect_folder
    from vitkit.detection.predictor import Detector

    folder = Path(args.folder)
    detector = common.folder_predictor(prog, args, Detector, "detection", {"--attention": args.attention,
                                                                           "--draw": args.draw},
                                       {"annotation file": args.annotations})
    if isinstance(detector, int):
        return detector
    summary = common.run_folder_command(prog, lambda: detect_folder(
        detector, folder, args.out, annotations=args.annotations, score_threshold=args.score_threshold,
        batch_size=args.batch_size, recursive=args.recursive, num_workers=args.workers, progress=sys.stderr.isatty(),
        draw_dir=args.draw), args.out, "nothing was written")
    if isinstance(summary, int):
        return summary

    def attention() -> list[tuple[str, str]]:  # images decoded in the annotation file's orientation, as detected
        files = [p.as_posix() for p in list_images(folder, args.recursive)]
        return common.attention_pictures(detector, folder, args.attention, recursive=args.recursive,
                                         score_threshold=args.score_threshold,
                                         size_hints=folder_image_ids(files, args.annotations)[1])

    return common.finish(prog, summary, folder, args.recursive, attention if args.attention else None)
