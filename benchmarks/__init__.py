"""Speed and memory comparisons of vitkit against its peers, measured side by side in one run (issue 5).

One module per workload group: :mod:`benchmarks.detr` (a, b), :mod:`benchmarks.vit` (c, f),
:mod:`benchmarks.caption` (d), :mod:`benchmarks.coco` (e), :mod:`benchmarks.gemm` (g); :mod:`benchmarks.runner`
selects, runs and writes them, and is the command line: ``python -m benchmarks.runner --quick --threads 1`` from the
repository root (a checkout tool: not installed with the package). Peers install with ``pip install -e ".[bench]"``.
Results of recorded runs live in ``benchmarks/results/``. The benchmarks use vitkit's public API only (``vitkit.load``,
the names the packages' ``__init__`` export, the ``vitkit`` command); :mod:`benchmarks.cli_startup` times the
command's start.
"""
