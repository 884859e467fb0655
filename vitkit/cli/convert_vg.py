"""Convert Visual Genome's region descriptions to a COCO-layout region-caption set: ``vitkit convert-vg``
(``tools/convert_vg.py``).

    vitkit convert-vg --regions region_descriptions.json --images image_data.json --out data/vg
                      [--val-fraction F | --val-ids FILE] [--seed K] [--file-names id|url] [--max-chars N]

Writes OUT/annotations/instances_{train,val}2017.json (rules: :func:`vitkit.data.visual_genome.convert_visual_genome`).
Exit status: 0 on success, 2 for bad input, with a one-line error."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vitkit.cli.common import command_parser, fail, positive, probability

PROG = "vitkit convert-vg"
# the defaults of vitkit.data.visual_genome / vitkit.data.region_captions, named here so --help imports no torch
# (tests/cli/test_cli_main.py checks that they agree)
DEFAULT_VAL_FRACTION = 0.05
MAX_CAPTION_CHARS = 500
EXAMPLES = """examples:
  {prog} --regions vg/region_descriptions.json --images vg/image_data.json --out data/vg
  {prog} --regions vg/region_descriptions.json --images vg/image_data.json --out data/vg --val-ids val_ids.txt
  {prog} --regions vg/region_descriptions.json --images vg/image_data.json --out data/vg --file-names url
      # then: ln -s vg/VG_100K vg/VG_100K_2 data/vg/train2017/ (and the same into data/vg/val2017/)"""


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The options of ``convert-vg``."""
    parser = command_parser(prog, __doc__, EXAMPLES)
    parser.add_argument("--regions", required=True, help="Visual Genome region_descriptions.json")
    parser.add_argument("--images", required=True, help="Visual Genome image_data.json (image sizes and URLs)")
    parser.add_argument("--out", required=True, help="dataset root: gets annotations/instances_{train,val}2017.json")
    split = parser.add_mutually_exclusive_group()
    split.add_argument("--val-fraction", type=probability, default=None,
                       help=f"fraction of the images drawn for val with --seed (default: {DEFAULT_VAL_FRACTION})")
    split.add_argument("--val-ids", metavar="FILE",
                       help="the val image ids: a JSON list, or integers separated by spaces, commas or lines")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --val-fraction draw (default: 0)")
    parser.add_argument("--file-names", choices=("id", "url"), default="id",
                        help="id: <image_id>.jpg; url: VG's folder too, e.g. VG_100K/<image_id>.jpg (default: id)")
    parser.add_argument("--max-chars", type=positive, default=MAX_CAPTION_CHARS,
                        help=f"longest phrase kept, in characters (default: {MAX_CAPTION_CHARS})")
    return parser


def read_ids(path: str | Path) -> list[int]:
    """Image ids from a file: a JSON list of integers, or integers separated by whitespace or commas.

    Raises:
        ValueError: naming the file and the first entry that is not an integer.
    """
    from vitkit.data.annotations import is_int  # heavy: imported after parsing so --help stays fast

    text = Path(path).read_text(encoding="utf-8")
    try:
        values = json.loads(text) if text.lstrip().startswith("[") else text.replace(",", " ").split()
    except ValueError as err:
        raise ValueError(f"{path} is not a valid JSON list: {err}") from err
    if not isinstance(values, list):
        raise ValueError(f"{path} holds a JSON {type(values).__name__}, not a list of image ids")
    for k, value in enumerate(values):
        if not (is_int(value) or (isinstance(value, str) and value.lstrip("-").isdigit())):
            raise ValueError(f"{path}: entry {k} is {value!r}, not an integer image id")
    return [int(v) for v in values]


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """Convert and print the counts: the exit status (see the module docstring).
    ``argv`` defaults to ``sys.argv[1:]``; ``prog`` names the command in messages."""
    args = build_parser(prog).parse_args(argv)
    from vitkit.data.visual_genome import convert_visual_genome  # heavy: imported after parsing so --help stays fast

    for path in (args.regions, args.images, args.val_ids):
        if path is not None and not Path(path).is_file():
            return fail(prog, f"file not found: {path}")
    try:
        val_ids = read_ids(args.val_ids) if args.val_ids else None
        result = convert_visual_genome(args.regions, args.images, args.out, val_ids=val_ids,
                                       val_fraction=args.val_fraction, seed=args.seed, file_names=args.file_names,
                                       max_chars=args.max_chars, warn=False)
    except (OSError, ValueError) as err:
        return fail(prog, str(err))
    for note in result.warnings:
        print(f"{prog}: note: {note}", file=sys.stderr)
    for split in ("train", "val"):
        print(f"{split}: {result.images[split]} images, {result.annotations[split]} regions -> "
              f"{result.paths[f'instances_{split}']}")
    return 0
