"""Train a model from a run config: `vitkit train`, the same options (vitkit/cli/train.py).

    python tools/train.py configs/detr_shapes.yaml [--key.sub value ...] [--ckpt_path PATH|last]
"""

import sys

from vitkit.cli.train import main

if __name__ == "__main__":
    sys.exit(main(prog="python tools/train.py"))
