"""Write the synthetic shapes dataset in COCO 2017 layout.

    python tools/make_shapes.py ROOT [--train N] [--val N] [--size S] [--seed K]
"""

from __future__ import annotations

import argparse
import time

from vitkit.data.shapes import make_shapes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate the synthetic shapes dataset (COCO 2017 layout).")
    parser.add_argument("root", help="output folder (gets train2017/, val2017/, annotations/)")
    parser.add_argument("--train", type=int, default=600, help="number of training images")
    parser.add_argument("--val", type=int, default=100, help="number of validation images")
    parser.add_argument("--size", type=int, default=192, help="nominal image side in px (each side varies +-size/6)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    paths = make_shapes(args.root, num_train=args.train, num_val=args.val, image_size=args.size, seed=args.seed)
    print(f"wrote {args.train} train + {args.val} val images in {time.perf_counter() - start:.1f} s")
    for name, path in paths.items():
        print(f"  {name:16s} {path}")


if __name__ == "__main__":
    main()
