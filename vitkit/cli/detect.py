"""Detect objects in every image of a folder with a detection checkpoint: ``vitkit detect`` (``tools/detect.py``).

    vitkit detect FOLDER --ckpt CKPT [--out dets.json] [--annotations instances_val2017.json]
        [--draw OUTDIR] [--attention OUTDIR] [--score-threshold 0.5] [--batch-size 8]
        [--recursive | --no-recursive] [--device auto|cpu|cuda] [--workers 2]

Writes a COCO results JSON, [{"image_id", "category_id", "bbox": [x, y, w, h], "score"}], with bbox in pixels of
the upright original image and category_id the dataset's category id. Image ids: with --annotations (the folder
being that split), the annotation file's ids by file_name, so `vitkit eval --annotations GT --results OUT`
scores the file as is; without, the files numbered 1, 2, ... in sorted order, with the mapping written beside the
output as OUT_STEM.images.json ({"images": [{"id", "file_name", "width", "height"}]}, COCO's images section;
written in both cases, with "error" on each failed file).

--draw OUTDIR writes each image with its labelled boxes under OUTDIR (same relative path; .png/.jpg/.jpeg inputs
keep their name, others get .png appended). --attention OUTDIR writes, per image, the last decoder layer's
cross-attention of each kept box (a heatmap, or the sampling points of deformable attention) as a PNG.

Image files are found by extension (jpg jpeg png bmp gif webp tif tiff, any letter case); other files are
ignored. A file that cannot be read is reported and the run goes on. The last line printed is a summary:
detected N, failed M (K boxes).

Exit status: 0 when every image was detected, 3 when some failed (listed on stderr, and in the sidecar), 2 for a
usage error (a missing folder, checkpoint or annotation file, a bad option), 130 when interrupted (nothing is
written). A thin shell over vitkit.detection.folder.detect_folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from vitkit.cli import common

if TYPE_CHECKING:
    from vitkit.detection.predictor import Detector

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


def _attention(args: argparse.Namespace, detector: Detector, folder: Path,
               failures: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Write the --attention pictures; returns the failures with those of the pictures added."""
    from vitkit.detection.folder import annotation_size_hints  # heavy: imported after parsing so --help stays fast

    sizes = {}
    if args.annotations is not None:  # decode in the annotation file's orientation, as detect_folder did
        sizes = annotation_size_hints(args.annotations, folder, args.recursive)
    return common.attention_pictures(detector, folder, args.attention, failures, recursive=args.recursive,
                                     size_hints=sizes, score_threshold=args.score_threshold)


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """Detect the folder and print the summary: the exit status (see the module docstring).
    ``argv`` defaults to ``sys.argv[1:]``; ``prog`` names the command in messages."""
    args = build_parser(prog).parse_args(argv)
    # heavy: imported after parsing so --help stays fast
    from vitkit.detection.folder import detect_folder
    from vitkit.detection.predictor import Detector

    folder, ckpt = Path(args.folder), Path(args.ckpt)
    error = common.folder_usage_error(folder, ckpt, {"--attention": args.attention, "--draw": args.draw})
    if error is not None:
        return common.fail(prog, error)
    if args.annotations is not None and not Path(args.annotations).is_file():
        return common.fail(prog, f"annotation file not found: {args.annotations}")
    detector = common.load_predictor(prog, ckpt, args, Detector, "detection")
    if isinstance(detector, int):
        return detector
    try:
        summary = detect_folder(detector, folder, args.out, annotations=args.annotations,
                                score_threshold=args.score_threshold, batch_size=args.batch_size,
                                recursive=args.recursive, num_workers=args.workers, progress=sys.stderr.isatty(),
                                draw_dir=args.draw)
    except (FileNotFoundError, NotADirectoryError, ValueError) as err:
        return common.fail(prog, str(err))
    except OSError as err:
        return common.fail(prog, f"{err.filename or args.out}: {err.strerror or err}")
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing was written", file=sys.stderr)
        return 130
    for warning in summary.warnings:
        print(f"{prog}: warning: {warning}", file=sys.stderr)
    failures = list(summary.failures)
    if args.attention is not None:
        try:
            failures = _attention(args, detector, folder, failures)
        except ValueError as err:
            return common.fail(prog, str(err))
    common.report_failures(prog, failures, f"the errors in {summary.image_ids}", folder=folder,
                           recursive=args.recursive, no_images=not failures and summary.detected == 0)
    print(summary.line())
    return 3 if failures else 0
