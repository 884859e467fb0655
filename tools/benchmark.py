"""Benchmark vitkit against its peers: `vitkit benchmark`, the same options (vitkit/cli/benchmark.py)."""

import sys

from vitkit.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main(prog="benchmark.py"))
