"""Speed and memory comparisons of vitkit against its peers, measured side by side in one run (issue 5).

One module per workload group: :mod:`benchmarks.detr` (a, b), :mod:`benchmarks.vit` (c, f),
:mod:`benchmarks.caption` (d), :mod:`benchmarks.coco` (e), :mod:`benchmarks.gemm` (g); :mod:`benchmarks.runner`
selects, runs and writes them; ``tools/benchmark.py`` is the command line. Peers install with
``pip install -e ".[bench]"``. Results of recorded runs live in ``benchmarks/results/``.
"""
