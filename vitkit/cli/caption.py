"""Caption every image in a folder with a captioning checkpoint: ``vitkit caption`` (``tools/caption.py``).

    vitkit caption FOLDER --ckpt CKPT [--out captions.jsonl] [--format jsonl|csv|txt] [--beam 3]
        [--batch-size 8] [--max-length L] [--recursive | --no-recursive] [--device auto|cpu|cuda] [--workers 2]
        [--overwrite] [--attention OUTDIR]

Writes one record per image, in sorted path order: {"file": path relative to FOLDER, "caption": ..., "score": ...},
or {"file": ..., "error": reason}. CSV (--format csv or an --out ending in .csv): columns file,caption,score,error.
--format txt: one UTF-8 caption file per image (a/b/cat.jpg -> a/b/cat.txt, beside the image or under --out DIR),
errors in captions_errors.jsonl there. Re-running with the same --out resumes.

Exit status: 0 every image captioned, 3 some failed, 2 usage error, 130 interrupted."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vitkit.cli import common

PROG = "vitkit caption"
EXAMPLES = """exit status: 0 all captioned, 3 some failed, 2 usage error

examples:
  {prog} photos/ --ckpt runs/caption_shapes/checkpoints/last.ckpt --out captions.jsonl --beam 3
  {prog} photos/ --ckpt last.ckpt --out captions.csv --beam 1 --no-recursive     # greedy, CSV, top folder only
  {prog} photos/ --ckpt last.ckpt --format txt                  # photos/a/cat.jpg -> photos/a/cat.txt
  {prog} photos/ --ckpt last.ckpt --format txt --out captions/  # -> captions/a/cat.txt
  {prog} photos/ --ckpt last.ckpt --attention attention/ --device cpu"""


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The options of ``caption``."""
    parser = common.command_parser(prog, __doc__, EXAMPLES)
    common.add_folder_and_checkpoint(parser, "captioning")
    parser.add_argument("--out", help="output file (default: captions.jsonl, or captions.csv with --format csv); "
                                      "an existing one is resumed. With --format txt: the folder the .txt files go "
                                      "under (default: FOLDER, each beside its image)")
    parser.add_argument("--format", choices=("jsonl", "csv", "txt"),
                        help="output format (default: from --out's suffix, .csv -> csv, else jsonl); txt = one "
                             "caption file per image")
    parser.add_argument("--beam", type=common.positive,
                        help="beam width; 1 = greedy (default: the checkpoint's, else 3)")
    parser.add_argument("--max-length", type=common.positive,
                        help="longest caption in tokens, BOS and EOS included (default: the checkpoint's)")
    common.add_folder_options(parser)
    parser.add_argument("--overwrite", action="store_true",
                        help="start a fresh output file (txt: rewrite every .txt) instead of resuming")
    common.add_attention_option(parser, "token")
    return parser


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """Caption the folder and print the summary: the exit status (see the module docstring).
    ``argv`` defaults to ``sys.argv[1:]``; ``prog`` names the command in messages."""
    args = build_parser(prog).parse_args(argv)
    # heavy: imported after parsing so --help stays fast
    from vitkit.captioning.folder import caption_folder
    from vitkit.captioning.predictor import CaptionPipeline

    folder, txt = Path(args.folder), args.format == "txt"
    out = Path(args.out) if args.out else folder if txt else Path(f"captions.{args.format or 'jsonl'}")
    pipeline = common.folder_predictor(prog, args, CaptionPipeline, "captioning", {"--attention": args.attention})
    if isinstance(pipeline, int):
        return pipeline
    generation = common.generation_options(args)
    summary = common.run_folder_command(prog, lambda: caption_folder(
        pipeline, folder, out, fmt=args.format, batch_size=args.batch_size, recursive=args.recursive,
        num_workers=args.workers, overwrite=args.overwrite, progress=sys.stderr.isatty(), **generation), out,
        f"the captions so far are in {f'the .txt files under {out}' if txt else out}; run the same command again to "
        "resume")
    if isinstance(summary, int):
        return summary
    return common.finish(prog, summary, folder, args.recursive, args.attention and (lambda: common.attention_pictures(
        pipeline, folder, args.attention, recursive=args.recursive, **generation)))
