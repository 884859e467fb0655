"""Run the embedded default job: train a tiny ViT on generated shape images (CPU, no download).

    python tools/demo.py                      # ~1,000 steps, about 2 minutes on a 2-core CPU
    python tools/demo.py --steps 200 --out-dir runs/quick

Writes ``metrics.json`` and ``model.safetensors`` to ``--out-dir``. A thin shell over
:func:`vitkit.demo.run_demo`.
"""

from __future__ import annotations

import argparse

from vitkit.demo import run_demo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000, help="optimiser steps (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per step (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the training images and weights")
    parser.add_argument("--out-dir", default="runs/demo", help="where metrics.json and model.safetensors go")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--log-every", type=int, default=100, help="steps between progress lines (0: quiet)")
    args = parser.parse_args(argv)

    m = run_demo(steps=args.steps, batch_size=args.batch_size, seed=args.seed, threads=args.threads,
                 log_every=args.log_every, out_dir=args.out_dir)
    print(f"done: val accuracy {m['val_accuracy']:.4f} (chance {m['chance_accuracy']:.2f}) after {m['steps']} steps "
          f"in {m['seconds']:.1f} s ({m['images_per_sec']:.0f} img/s); wrote {args.out_dir}/metrics.json and "
          f"{args.out_dir}/model.safetensors")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
