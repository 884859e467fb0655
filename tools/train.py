"""Train a model from a YAML recipe: python tools/train.py configs/detr_shapes.yaml [--key.sub value ...]."""

from vitkit.cli.train import main

if __name__ == "__main__":
    main()
