"""Shared benchmark machinery: settings, interleaved timing, records, peer checks, profiling, machine info.

Timing protocol (every workload): all variants of a workload (vitkit's, the peer's, reference variants) are
built first with the same inputs and thread count, warmed up, then timed *interleaved*: each repetition runs
every variant once, back to back, so a change in machine load hits all of them alike. The reported time is
the median over the repetitions; every repetition's time is kept in the record.
"""

from __future__ import annotations

import importlib
import math
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# Peers install through the project's optional extra: pip install -e ".[bench]".
BENCH_EXTRA_HINT = 'install the benchmark peers with: pip install -e ".[bench]"'


class MissingPeerError(RuntimeError):
    """A workload's peer package is not installed."""


@dataclass
class Settings:
    """What every workload gets from the command line.

    Attributes:
        reps: timed repetitions per variant (the median is reported).
        warmup: untimed runs per variant before timing.
        threads: torch intra-op threads, the same for vitkit and the peer.
        quick: tiny sizes and depths, for a smoke test (numbers are meaningless).
        profile_dir: when set, one extra run of each vitkit variant (and its peer) under torch.profiler
            writes its top ops here.
        seed: seed for weights, inputs and synthetic data.
        compile: also time ``torch.compile``'d vitkit variants where a workload has one.
        malloc: ``default`` (glibc as shipped) or ``retain`` (:func:`retain_freed_memory`, applied by the CLI in
            its own process and by workloads in the processes they spawn).
    """

    reps: int = 5
    warmup: int = 2
    threads: int = 1
    quick: bool = False
    profile_dir: Path | None = None
    seed: int = 0
    compile: bool = False
    malloc: str = "default"


def require(module: str, workload: str) -> Any:
    """Import a peer package or raise :class:`MissingPeerError` naming the workload and the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingPeerError(f"workload {workload!r} needs the peer package {module!r} ({e}); "
                               f"{BENCH_EXTRA_HINT}") from e


def minor_faults() -> int:
    """Minor page faults of this process so far (``getrusage``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_interleaved(fns: dict[str, Callable[[], Any]], reps: int, warmup: int,
                     faults: dict[str, list[int]] | None = None) -> dict[str, list[float]]:
    """Time several callables, interleaved.

    Args:
        fns: name -> zero-argument callable (one unit of work; it must finish its work before returning).
        reps: timed repetitions of each.
        warmup: untimed calls of each first.
        faults: when given, filled with name -> the minor page faults of each
            timed call. Large fresh allocations fault on first touch; in a VM each fault can cost microseconds,
            so a side that allocates more pays for it in time (see :func:`retain_freed_memory`).

    Returns:
        name -> list of ``reps`` wall-clock times in seconds.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            f0 = minor_faults()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            if faults is not None:
                faults.setdefault(name, []).append(minor_faults() - f0)
    return times


def synchronized(fns: dict[str, Callable[[], Any]], device: str | torch.device) -> dict[str, Callable[[], Any]]:
    """The same callables, each waiting for ``device`` to finish its queued kernels before it returns (cuda runs
    asynchronously: without this :func:`time_interleaved` would time the kernel launches). On the CPU: unchanged."""
    if torch.device(device).type != "cuda":
        return fns

    def wrap(fn: Callable[[], Any]) -> Callable[[], Any]:
        def call() -> Any:
            out = fn()
            torch.cuda.synchronize(device)
            return out

        return call

    return {name: wrap(fn) for name, fn in fns.items()}


def fault_fields(faults: dict[str, list[int]], vitkit: str, peer: str = "peer") -> dict[str, float]:
    """``vitkit_minor_faults`` / ``peer_minor_faults``: median minor page faults per timed call, where counted."""
    out = {}
    for side, name in (("vitkit", vitkit), ("peer", peer)):
        if faults.get(name):
            out[f"{side}_minor_faults"] = float(statistics.median(faults[name]))
    return out


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def retain_freed_memory(threshold: int = 1 << 30) -> bool:
    """Make glibc malloc serve allocations below ``threshold`` bytes from its heap and keep freed memory there.

    By default glibc maps every allocation of 32 MiB or more afresh and unmaps it on free, so each such tensor
    is page-faulted (and zeroed by the kernel) on every call. With this, freed memory is kept and reused by later
    allocations that fit in it; the heap does not shrink, so resident memory can stay higher. Process-wide: in a
    benchmark it applies to vitkit and its peer alike. Returns False where the C library refuses (not glibc).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, threshold))


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def record(workload: str, vitkit_times: list[float] | None, peer: str | None, peer_times: list[float] | None,
           **extra: Any) -> dict[str, Any]:
    """One result row: ``workload, vitkit_s, peer, peer_s, speedup`` (= peer_s / vitkit_s), then ``extra``.

    Times are medians in seconds; the per-repetition times go to ``vitkit_times_s`` / ``peer_times_s``.
    """
    vitkit_s = median(vitkit_times) if vitkit_times else None
    peer_s = median(peer_times) if peer_times else None
    speedup = peer_s / vitkit_s if vitkit_s and peer_s else None
    rec: dict[str, Any] = {"workload": workload, "vitkit_s": vitkit_s, "peer": peer, "peer_s": peer_s,
                           "speedup": speedup}
    rec.update(extra)
    if vitkit_times:
        rec["vitkit_times_s"] = [round(t, 6) for t in vitkit_times]
    if peer_times:
        rec["peer_times_s"] = [round(t, 6) for t in peer_times]
    return rec


def check_target(rec: dict[str, Any], text: str, met: bool | None) -> dict[str, Any]:
    """Attach the issue's target (``target``, human-readable) and whether this run meets it (``target_met``)."""
    rec["target"] = text
    rec["target_met"] = met
    return rec


def profile_top_ops(fn: Callable[[], Any], out_file: Path, row_limit: int = 25) -> str:
    """Run ``fn`` once under torch.profiler (CPU) and write the op table sorted by self CPU time.

    Returns:
        The table text (also written to ``out_file``).
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        fn()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=row_limit)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(table)
    return table


def profile_python(fn: Callable[[], Any], out_file: Path, row_limit: int = 25) -> str:
    """Run ``fn`` once under cProfile (for work outside torch ops) and write the top functions by own time."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.runcall(fn)
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(row_limit)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(buf.getvalue())
    return buf.getvalue()


def maybe_profile(settings: Settings, workload: str, fns: dict[str, Callable[[], Any]], python: bool = False) -> None:
    """With ``settings.profile_dir``: profile each callable once into ``{dir}/{workload}__{name}.txt``
    (torch.profiler op table, or cProfile with ``python=True``)."""
    if settings.profile_dir is None:
        return
    for name, fn in fns.items():
        (profile_python if python else profile_top_ops)(fn, Path(settings.profile_dir) / f"{workload}__{name}.txt")


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` as counted by ``torch.utils.flop_counter.FlopCounterMode`` (GEMMs, convs,
    attention; 2 per multiply-add; backward included when ``fn`` runs it). vitkit's fused inference MLP kernel
    (``mkldnn._linear_pointwise``, :mod:`vitkit.layers.mlp`) is counted as the linear layer it is."""
    from torch.utils.flop_counter import FlopCounterMode

    def linear_pointwise(x_shape, w_shape, *args, **kwargs) -> int:
        return 2 * math.prod(x_shape[:-1]) * x_shape[-1] * w_shape[0]  # (M, K) x (N, K)^T

    mapping = {}
    if hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        mapping[torch.ops.mkldnn._linear_pointwise] = linear_pointwise
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    with counter:
        fn()
    return int(counter.get_total_flops())


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The speed-relevant ISA flags this CPU reports (AMX / AVX-512 bf16)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(f for f in flags if f.startswith(("amx", "avx512_bf16", "avx512f")))
    except OSError:
        pass
    return []


def machine_facts(threads: int) -> dict[str, Any]:
    """Date, CPU, load and software facts of a benchmark run on ``threads`` torch threads."""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "threads": threads,
        "python": platform.python_version(),
    }


def machine_info(settings: Settings) -> dict[str, Any]:
    """Date, machine and software facts written next to the results, with the timing settings."""
    return {**machine_facts(settings.threads), "quick": settings.quick, "reps": settings.reps,
            "warmup": settings.warmup, "malloc": settings.malloc}
