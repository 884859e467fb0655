"""Write the synthetic shapes dataset in COCO 2017 layout: ``vitkit make-shapes`` (``tools/make_shapes.py``).

    vitkit make-shapes ROOT [--train N] [--val N] [--size S] [--seed K]
"""

from __future__ import annotations

import argparse
import time

PROG = "vitkit make-shapes"
EXAMPLES = """examples:
  {prog} data/shapes                                  # 600 train + 100 val images, as detr_shapes expects
  {prog} /tmp/tiny --train 8 --val 4 --size 96 --seed 1"""


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The options of ``make-shapes``."""
    parser = argparse.ArgumentParser(prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="Generate the synthetic shapes dataset (COCO 2017 layout).",
                                     epilog=EXAMPLES.format(prog=prog))
    parser.add_argument("root", help="output folder (gets train2017/, val2017/, annotations/)")
    parser.add_argument("--train", type=int, default=600, help="number of training images")
    parser.add_argument("--val", type=int, default=100, help="number of validation images")
    parser.add_argument("--size", type=int, default=192, help="nominal image side in px (each side varies +-size/6)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    return parser


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """Generate the set and print where its files are; returns 0."""
    args = build_parser(prog).parse_args(argv)
    from vitkit.data.shapes import make_shapes  # heavy: imported after parsing so --help stays fast

    start = time.perf_counter()
    paths = make_shapes(args.root, num_train=args.train, num_val=args.val, image_size=args.size, seed=args.seed)
    print(f"wrote {args.train} train + {args.val} val images in {time.perf_counter() - start:.1f} s")
    for name, path in paths.items():
        print(f"  {name:16s} {path}")
    return 0
