"""Caption every image in a folder with a captioning checkpoint: ``vitkit caption`` (``tools/caption.py``).

    vitkit caption FOLDER --ckpt CKPT [--out captions.jsonl] [--format jsonl|csv|txt] [--beam 3]
        [--batch-size 8] [--max-length L] [--recursive | --no-recursive] [--device auto|cpu|cuda] [--workers 2]
        [--overwrite] [--attention OUTDIR]

Writes one record per image, in sorted path order: {"file": path relative to FOLDER, "caption": ..., "score": ...},
or {"file": ..., "error": reason} for a file that cannot be read (the run goes on). Image files are found by
extension (jpg jpeg png bmp gif webp tif tiff, any letter case); other files are ignored. With --format csv (or an
--out ending in .csv) the columns are file,caption,score,error.

With --format txt (only when asked for: never inferred from --out) each image gets its own UTF-8 caption file, the
caption on one line: a/b/cat.jpg -> a/b/cat.txt, beside the image by default, or under --out DIR (a folder) with
the image's relative path. An image that fails gets no .txt; its error record goes to captions_errors.jsonl in that
folder (removed once no image has failed). Two images that would share a .txt (cat.jpg and cat.png) are a usage
error.

Re-running with the same --out resumes: images captioned there (txt: whose .txt exists) are skipped, failed ones
are retried, and every image keeps at most one record. The last line printed is a summary: captioned N, failed M,
skipped K.

--attention OUTDIR also writes, per image, a PNG of each generated token's cross-attention over the image (the
last decoder layer's, heads averaged), under OUTDIR with the image's relative path (+ .png unless it is one).

Exit status (the folder commands' one rule, vitkit.cli.common.finish): 0 when every image has a caption, 3 when
some failed (their error records say why), 2 for a usage error (a missing folder or checkpoint, a bad option or
output file), 130 when interrupted (re-run to resume).
A thin shell over vitkit.captioning.folder.caption_folder.
"""

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
