"""(c) ViT-B/16 forward against timm and (f) peak memory of a ViT-B/16 forward at high resolution.

(c) ``vit_forward_{fp32,bf16}``: 8 x 3 x 224 x 224 (``--quick``: 1 x 64 x 64, 2 blocks). timm's
``vit_base_patch16_224`` (``pretrained=False``) and vitkit's ``ViTEncoder.from_timm`` of it, so both hold the
same weights; both run ``forward_features`` (no classifier head) under ``torch.inference_mode`` at the same
dtype: fp32 weights and input, or bf16 weights and input (timm as built or cast with ``.to(torch.bfloat16)``;
vitkit through :func:`vitkit.kernels.precision.apply_precision` with ``"fp32"`` or ``"bf16"``, which prepacks its linear
weights for oneDNN). The max abs difference of the two outputs is recorded.

(f) ``vit_memory_{size}``: one fresh Python process per (side, size), batch 1 at 1024 x 1024 and 2048 x 2048
(``--quick``: 64 and 128, 2 blocks). Peak RSS is ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` after the
forward, nothing subtracted; the baseline after imports and model build is recorded too (current ``VmRSS`` and
the peak so far; the kernel's VmHWM is recorded as a cross-check). vitkit: a ViT-B/16 ``ViTEncoder`` with its
inference levers (bf16 weights and input, ``inference_mode``; the learned position table is resampled to the
grid). Peer: timm ``vit_base_patch16_224`` with ``dynamic_img_size=True``, also bf16 under ``inference_mode``.
Each child is started through ``/bin/sh`` (see :func:`_spawn`). ``vitkit_s`` / ``peer_s`` of these records are
the time of the single measured forward (no warm-up: a cold process is the point), for information only.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    Settings,
    count_flops,
    fault_fields,
    maybe_profile,
    record,
    require,
    retain_freed_memory,
    time_interleaved,
)
from vitkit.kernels.precision import apply_precision

WORKLOAD_FORWARD = "vit_forward"
WORKLOAD_MEMORY = "vit_memory"
REPO_ROOT = Path(__file__).resolve().parent.parent


def _timm_vit(workload: str, depth: int | None = None, **kwargs):
    timm = require("timm", workload)
    if depth is not None:
        kwargs["depth"] = depth
    return timm.create_model("vit_base_patch16_224", pretrained=False, **kwargs)


def run_forward(settings: Settings) -> list[dict[str, Any]]:
    from vitkit.core import ViTEncoder

    batch, size, depth = (1, 64, 2) if settings.quick else (8, 224, None)
    torch.manual_seed(settings.seed)
    peer32 = _timm_vit(WORKLOAD_FORWARD, depth, img_size=size).eval()
    vk32 = ViTEncoder.from_timm(peer32).eval()
    peer16, vk16 = copy.deepcopy(peer32).to(torch.bfloat16), copy.deepcopy(vk32)
    apply_precision(vk32, "fp32")  # vitkit's levers, as vitkit.load(..., precision=...) applies them
    apply_precision(vk16, "bf16")
    x32 = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(settings.seed))
    x16 = x32.to(torch.bfloat16)
    fused = bool(getattr(peer32.blocks[0].attn, "fused_attn", False))

    def fn(model, x):
        @torch.inference_mode()
        def call():
            return model.forward_features(x)

        return call

    fns = {"vitkit_fp32": fn(vk32, x32), "peer_fp32": fn(peer32, x32),
           "vitkit_bf16": fn(vk16, x16), "peer_bf16": fn(peer16, x16)}
    diff = {d: float((fns[f"vitkit_{d}"]().float() - fns[f"peer_{d}"]().float()).abs().max())
            for d in ("fp32", "bf16")}
    gflop = count_flops(fns["vitkit_fp32"]) / 1e9
    faults: dict[str, list[int]] = {}
    times = time_interleaved(fns, settings.reps, settings.warmup, faults)
    maybe_profile(settings, WORKLOAD_FORWARD, fns)
    out = []
    for d in ("fp32", "bf16"):
        out.append(record(f"{WORKLOAD_FORWARD}_{d}", times[f"vitkit_{d}"], f"timm vit_base_patch16_224 ({d})",
                          times[f"peer_{d}"], dtype=d, peer_dtype=d, batch_shape=[batch, 3, size, size],
                          threads=settings.threads, same_weights=True, max_abs_output_diff=diff[d],
                          timm_fused_attn=fused, gflop=gflop,
                          **fault_fields(faults, f"vitkit_{d}", f"peer_{d}")))
    return out


# ------------------------------------------------------------------------------------------------ (f) memory
def _status_mb(key: str) -> float:
    """A /proc/self/status field in MiB: ``VmRSS`` (current resident set) or ``VmHWM`` (its peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def memory_child(impl: str, size: int, threads: int, quick: bool, seed: int) -> dict[str, Any]:
    """Build one ViT-B/16 (bf16, eval), run one forward at size x size, report RSS (run in a fresh process)."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    depth = 2 if quick else 12
    if impl == "vitkit":
        from vitkit.core import ViTEncoder

        model = ViTEncoder(patch_size=16, embed_dim=768, depth=depth, num_heads=12, img_size=224)  # ViT-B/16
    else:
        model = _timm_vit(WORKLOAD_MEMORY, depth, dynamic_img_size=True)
    if impl == "vitkit":
        apply_precision(model, "bf16")
    else:
        model = model.to(torch.bfloat16).eval()
    x = torch.randn(1, 3, size, size, dtype=torch.bfloat16)
    baseline_rss, baseline_peak = _status_mb("VmRSS"), _maxrss_mb()
    with torch.inference_mode():
        t0 = time.perf_counter()
        tokens = model.forward_features(x)
        seconds = time.perf_counter() - t0
    return {"impl": impl, "size": size, "tokens_shape": list(tokens.shape), "seconds": seconds,
            "baseline_rss_mb": baseline_rss, "baseline_peak_rss_mb": baseline_peak, "peak_rss_mb": _maxrss_mb(),
            "vm_hwm_mb": _status_mb("VmHWM")}


def _spawn(impl: str, size: int, settings: Settings) -> dict[str, Any]:
    # Through /bin/sh, which forks the child rather than exec'ing it: Linux carries ru_maxrss across execve, so
    # a child exec'd straight from this (large) process would report this process's RSS as its own peak.
    cmd = ["/bin/sh", "-c", '"$@"; exit $?', "sh", sys.executable, "-m", "benchmarks.vit", "--memory-child", impl,
           "--size", str(size), "--threads", str(settings.threads), "--seed", str(settings.seed),
           "--malloc", settings.malloc]
    cmd += ["--quick"] if settings.quick else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-2000:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_memory(settings: Settings) -> list[dict[str, Any]]:
    require("timm", WORKLOAD_MEMORY)
    sizes = (64, 128) if settings.quick else (1024, 2048)
    out = []
    for size in sizes:
        vk, peer = _spawn("vitkit", size, settings), _spawn("timm", size, settings)
        rec = record(f"{WORKLOAD_MEMORY}_{size}", [vk["seconds"]] if "seconds" in vk else None,
                     "timm vit_base_patch16_224 dynamic_img_size=True (bf16)",
                     [peer["seconds"]] if "seconds" in peer else None,
                     dtype="bf16", peer_dtype="bf16", batch_shape=[1, 3, size, size], threads=settings.threads,
                     vitkit_peak_rss_mb=vk.get("peak_rss_mb"), vitkit_baseline_rss_mb=vk.get("baseline_rss_mb"),
                     vitkit_baseline_peak_rss_mb=vk.get("baseline_peak_rss_mb"),
                     peer_peak_rss_mb=peer.get("peak_rss_mb"), peer_baseline_rss_mb=peer.get("baseline_rss_mb"),
                     peer_baseline_peak_rss_mb=peer.get("baseline_peak_rss_mb"),
                     vitkit_vm_hwm_mb=vk.get("vm_hwm_mb"), peer_vm_hwm_mb=peer.get("vm_hwm_mb"),
                     note="one forward per fresh process; times are that single cold forward")
        for side, res in (("vitkit", vk), ("peer", peer)):
            if "error" in res:
                rec[f"{side}_error"] = res["error"]
        out.append(rec)
    return out


def _main() -> None:
    p = argparse.ArgumentParser(description="(f) child process: one ViT-B/16 forward, prints RSS as JSON")
    p.add_argument("--memory-child", choices=("vitkit", "timm"), required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--malloc", choices=("default", "retain"), default="default")
    a = p.parse_args()
    if a.malloc == "retain" and not retain_freed_memory():
        sys.exit("--malloc retain: this C library refused mallopt")
    print(json.dumps(memory_child(a.memory_child, a.size, a.threads, a.quick, a.seed)))


if __name__ == "__main__":
    _main()
