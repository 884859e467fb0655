"""(g) The machine's GEMM peak, measured in the same run: the yardstick for the achieved FLOP/s of (a)-(c).

``gemm_bf16``: median time of an N x N x N bf16 ``torch.matmul`` (N = 4096; 256 with ``--quick``), as TFLOP/s
(2 N^3 FLOPs). ``gemm_fp32`` is the same in fp32, for reference. No peer: ``peer`` is None. :func:`measure` does
the same on any device (``benchmarks/gpu_check.py`` uses it on cuda).
"""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.common import Settings, record, synchronized, time_interleaved


def run(settings: Settings) -> list[dict[str, Any]]:
    return measure(256 if settings.quick else 4096, "cpu", max(settings.reps, 5), max(settings.warmup, 2),
                   settings.seed, settings.threads)


def measure(n: int, device: str | torch.device, reps: int, warmup: int, seed: int = 0,
            threads: int | None = None) -> list[dict[str, Any]]:
    """``gemm_bf16`` and ``gemm_fp32`` records of an n x n x n matmul on ``device`` (cuda: synchronised timing)."""
    g = torch.Generator().manual_seed(seed)
    a32, b32 = (torch.randn(n, n, generator=g).to(device) for _ in range(2))
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    out16, out32 = torch.empty_like(a16), torch.empty_like(a32)
    fns = {"bf16": lambda: torch.matmul(a16, b16, out=out16), "fp32": lambda: torch.matmul(a32, b32, out=out32)}
    times = time_interleaved(synchronized(fns, device), reps=reps, warmup=warmup)
    flop = 2 * n**3
    out = []
    for dtype in ("bf16", "fp32"):
        rec = record(f"gemm_{dtype}", times[dtype], None, None, dtype=dtype, shape=[n, n, n],
                     threads=threads, gflop=flop / 1e9, device=str(device))
        rec["vitkit_tflops"] = flop / rec["vitkit_s"] / 1e12
        rec["note"] = "torch.matmul, the yardstick for (g); vitkit_s is the matmul time"
        out.append(rec)
    return out


def attach_flops(records: list[dict[str, Any]], peak_tflops: float | None) -> None:
    """(g): give each record that carries ``gflop`` (the vitkit side's FLOPs) its achieved TFLOP/s and, when
    the bf16 GEMM peak was measured in this run, the fraction of it."""
    for rec in records:
        if rec.get("gflop") is None or rec["workload"].startswith("gemm_") or not rec.get("vitkit_s"):
            continue
        rec["vitkit_tflops"] = rec["gflop"] / rec["vitkit_s"] / 1e3
        if peak_tflops:
            rec["bf16_gemm_peak_tflops"] = peak_tflops
            rec["frac_of_bf16_gemm_peak"] = rec["vitkit_tflops"] / peak_tflops
