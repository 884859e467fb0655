"""Export a checkpoint as ONNX or safetensors: `vitkit export`, the same options (vitkit/cli/export.py)."""

import sys

from vitkit.cli.export import main

if __name__ == "__main__":
    sys.exit(main(prog="export.py"))
