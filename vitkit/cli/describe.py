"""Find the objects of every image in a folder and caption each, with a describe checkpoint: ``vitkit describe``
(``tools/describe.py``).

    vitkit describe FOLDER --ckpt CKPT [--out regions.jsonl] [--draw OUTDIR] [--boxes FILE [--annotations GT]]
        [--threshold 0.5] [--max-detections N] [--beam 3] [--max-length L] [--batch-size 8]
        [--recursive | --no-recursive] [--device auto|cpu|cuda] [--workers 2] [--overwrite]

Writes one JSON object per image, in sorted path order: {"file": path relative to FOLDER, "width", "height",
"boxes": [[x0, y0, x1, y1], ...] in pixels of the upright original image, "labels", "label_names", "category_ids",
"scores", "captions": one per box}; failures also in OUT_STEM.errors.jsonl. Re-running with the same --out resumes.

--boxes FILE captions the boxes of a COCO results JSON, [{"image_id" or "file_name", "bbox": [x, y, w, h], ...}]
in pixels, instead of detecting; "image_id" means GT's ids with --annotations GT, else the files numbered 1, 2, ...
in sorted path order (as `vitkit detect` numbers them).

Exit status: 0 every image described, 3 some failed, 2 usage error, 130 interrupted."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vitkit.cli import common

PROG = "vitkit describe"
EXAMPLES = """exit status: 0 all described, 3 some failed, 2 usage error

examples:
  {prog} photos/ --ckpt runs/describe_shapes/checkpoints/last.ckpt --out regions.jsonl --draw drawn/
  {prog} photos/ --ckpt last.ckpt --boxes dets.json     # the boxes of `vitkit detect photos/ --out dets.json`
  {prog} data/shapes/val2017 --ckpt last.ckpt --boxes gt_boxes.json --annotations instances_val2017.json
  {prog} photos/ --ckpt last.ckpt --threshold 0.7 --beam 1 --device cpu"""


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The options of ``describe``."""
    parser = common.command_parser(prog, __doc__, EXAMPLES)
    common.add_folder_and_checkpoint(parser, "describe")
    parser.add_argument("--out", default="regions.jsonl",
                        help="JSON Lines file to write (default: regions.jsonl); an existing one is resumed")
    parser.add_argument("--draw", metavar="OUTDIR", help="write the images with their boxes and captions drawn under "
                                                         "OUTDIR")
    parser.add_argument("--boxes", metavar="FILE",
                        help="COCO results JSON ([{image_id or file_name, bbox: [x, y, w, h]}], px) whose boxes are "
                             "captioned instead of detections; file_name: path relative to FOLDER (or a unique bare "
                             "name); image_id: --annotations' ids, else FOLDER's files numbered 1, 2, ... in sorted "
                             "order (the ids of `vitkit detect` without --annotations)")
    parser.add_argument("--annotations", metavar="GT", help="COCO instances JSON of the folder's split: the image ids "
                                                            "of --boxes entries")
    parser.add_argument("--threshold", type=common.probability, default=0.5,
                        help="keep detections whose best class scores at least this (default: 0.5; not used with "
                             "--boxes)")
    parser.add_argument("--max-detections", type=common.positive,
                        help="at most this many detections per image (default: the checkpoint's num_select)")
    parser.add_argument("--beam", type=common.positive, help="beam width; 1 = greedy (default: the checkpoint's, "
                                                             "else 3)")
    parser.add_argument("--max-length", type=common.positive,
                        help="longest caption in tokens, BOS and EOS included (default: the checkpoint's)")
    common.add_folder_options(parser)
    parser.add_argument("--overwrite", action="store_true", help="start a fresh output file instead of resuming")
    return parser


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """Describe the folder and print the summary: the exit status (see the module docstring).
    ``argv`` defaults to ``sys.argv[1:]``; ``prog`` names the command in messages."""
    args = build_parser(prog).parse_args(argv)
    # heavy: imported after parsing so --help stays fast
    from vitkit.describe.folder import describe_folder
    from vitkit.describe.predictor import Describer

    if args.annotations is not None and args.boxes is None:
        return common.fail(prog, "--annotations gives the image ids of --boxes entries; pass --boxes FILE too")
    folder = Path(args.folder)
    describer = common.folder_predictor(prog, args, Describer, "describe", {"--draw": args.draw},
                                        {"--boxes file": args.boxes, "--annotations file": args.annotations})
    if isinstance(describer, int):
        return describer
    generation = common.generation_options(args)
    summary = common.run_folder_command(prog, lambda: describe_folder(
        describer, folder, args.out, boxes_file=args.boxes, annotations=args.annotations, threshold=args.threshold,
        max_detections=args.max_detections, batch_size=args.batch_size, recursive=args.recursive,
        num_workers=args.workers, overwrite=args.overwrite, progress=sys.stderr.isatty(), draw_dir=args.draw,
        **generation), args.out, f"the regions so far are in {args.out}; run the same command again to resume")
    if isinstance(summary, int):
        return summary
    return common.finish(prog, summary, folder, args.recursive)
