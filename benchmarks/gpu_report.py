"""Writes the GPU check's result (:mod:`benchmarks.gpu_check`) as ``gpu_check.json`` and ``gpu_check.md``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

JSON_NAME, MD_NAME = "gpu_check.json", "gpu_check.md"


def write(result: dict[str, Any], out: Path) -> None:
    """Both files under ``out`` (overwritten: the check calls this after every section)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / JSON_NAME).write_text(json.dumps(result, indent=1, default=str) + "\n")
    (out / MD_NAME).write_text(markdown(result))


def _f(x: Any, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


def _header(result: dict[str, Any]) -> list[str]:
    info = result["info"]
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v)
    gpu = (f"{info['gpu']} ({info['gpu_memory_gib']} GiB, sm {info['gpu_capability']}, CUDA {info['cuda']})"
           if "gpu" in info else f"{info['device']}: {info['cpu_model']} (no GPU)")
    lines = ["# vitkit GPU check", "", f"- date: {info['date']}", f"- device: {gpu}", f"- {versions}",
             f"- missing optional packages: {', '.join(info['missing_optional']) or 'none'}",
             f"- options: {result['options']}", f"- elapsed: {result.get('elapsed_s')} s"]
    if result["options"].get("tiny") == "True":
        lines.append("- **tiny sizes (dry run): the numbers mean nothing**")
    return lines


def _tests(t: dict[str, Any]) -> list[str]:
    lines = ["", "## Tests on the device", "",
             f"`{t['command']}`: {t.get('passed', '-')} passed, {t.get('failed', '-')} failed, "
             f"{t.get('errors', '-')} errors, {t.get('skipped', '-')} skipped (exit {t['returncode']}, "
             f"{t['seconds']} s; output in {t['log']})"]
    for f in t.get("failures", []):
        lines.append(f"- FAILED `{f['test']}`: {f['message'][:200]!r}")
    return lines


def _train(r: dict[str, Any]) -> list[str]:
    frac = r.get("frac_of_bf16_gemm_peak")
    return ["", "## Training: configs/detr_coco.yaml, bf16-mixed", "",
            "| batch | image | steps | images/s | step s | peak memory MiB | loss first 3 -> last 3 | fell | "
            "TFLOP/s | MFU |", "|---:|---|---:|---:|---:|---:|---|---|---:|---:|",
            f"| {r['batch']} | {'x'.join(map(str, r['image_shape']))} | {r['steps']} | {r['images_per_s']:.2f} | "
            f"{r['step_s']:.4f} | {r['peak_memory_mib']:.0f} ({r['peak_memory_kind']}) | "
            f"{r['loss_first3']:.3f} -> {r['loss_last3']:.3f} | {'yes' if r['loss_fell'] else '**no**'} | "
            f"{_f(r.get('vitkit_tflops'), '.2f')} | {'-' if frac is None else f'{100 * frac:.1f}%'} |",
            "", f"Batch sizes tried: {r['batch_sizes_tried'] or 'fixed'}; FLOPs per step {r['gflop']:.1f} GFLOP "
            "(FlopCounterMode, deformable sampling not counted: MFU is a lower bound)."]


def _peers(recs: list[dict[str, Any]]) -> list[str]:
    lines = ["", "## Peers (same batch, same run; speedup = peer s / vitkit s)", "",
             "| workload | batch | vitkit s | peer | peer s | speedup | target | met | TFLOP/s | % bf16 GEMM |",
             "|---|---|---:|---|---:|---:|---|---|---:|---:|"]
    for r in recs:
        met = {True: "yes", False: "**no**", None: "-"}[r.get("target_met")] if "target" in r else ""
        frac = r.get("frac_of_bf16_gemm_peak")
        lines.append(f"| {r['workload']} | {'x'.join(map(str, r.get('batch_shape', [])))} | {_f(r['vitkit_s'])} | "
                     f"{r.get('peer') or '-'} | {_f(r.get('peer_s'))} | {_f(r.get('speedup'), '.2f')} | "
                     f"{r.get('target', '')} | {met} | {_f(r.get('vitkit_tflops'), '.2f')} | "
                     f"{'-' if frac is None else f'{100 * frac:.1f}%'} |")
    compiled = [r for r in recs if r["workload"].endswith("_compiled")]
    if compiled:
        lines += ["", "What torch.compile adds (eager s / compiled s; > 1 is faster):", ""]
        lines += [f"- {r['workload']}: vitkit {_f(r.get('compile_adds_vitkit'), '.2f')}x, peer "
                  f"{_f(r.get('compile_adds_peer'), '.2f')}x" for r in compiled]
    notes = [(r["workload"], k, v) for r in recs for k, v in r.items() if "compile_error" in k or "skipped" in k]
    lines += [f"- {w}: {k}: {str(v)[:300]}" for w, k, v in notes]
    return lines


def markdown(result: dict[str, Any]) -> str:
    """The result as markdown: header, tests, the training run, GEMM peak, peers, errors."""
    lines = _header(result)
    if "tests" in result:
        lines += _tests(result["tests"])
    recs = result["records"]
    for r in (r for r in recs if r["workload"] == "gpu_train_detr_coco"):
        lines += _train(r)
    gem = [r for r in recs if r["workload"].startswith("gemm_")]
    if gem:
        lines += ["", "## GEMM peak (torch.matmul, the MFU yardstick)", ""]
        lines += [f"- {r['workload']} {'x'.join(map(str, r['shape']))}: {r['vitkit_tflops']:.1f} TFLOP/s" for r in gem]
    peers = [r for r in recs if r["workload"].startswith("gpu_") and r["workload"] != "gpu_train_detr_coco"]
    if peers:
        lines += _peers(peers)
    for name, err in result.get("errors", {}).items():
        lines += ["", f"## Error in {name}", "", "```", err.strip()[-1500:], "```"]
    return "\n".join(lines) + "\n"
