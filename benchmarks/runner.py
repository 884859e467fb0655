"""Benchmark vitkit against its peers (issue 5), side by side in one process: select the workloads, run them, attach
(g) FLOP/s and the issue's targets, write JSON and a markdown table. The command line, from the repository root
of a source checkout (the benchmarks are not installed with the package; peers: ``pip install -e ".[bench]"``)::

    python -m benchmarks.runner [--only detr_infer,vit_forward,...] [--reps 5] [--warmup 2] [--threads N]
        [--quick] [--json-out FILE] [--md-out FILE] [--note TEXT] [--profile-dir DIR] [--malloc default|retain]

Each workload builds vitkit's model and its peer (random weights) with the same inputs and thread count, warms up,
then times them interleaved and reports medians; speedup = peer_s / vitkit_s. --json-out writes the list of
records, --md-out a markdown table with the date, CPU model, torch version and threads. --quick uses tiny sizes (a
smoke test; its numbers mean nothing). --profile-dir writes each timed variant's top ops (torch.profiler, one extra
run) as text files. --malloc retain keeps freed memory in glibc's heap for the whole process (both sides): by
default every allocation of 32 MiB or more is mapped afresh and page-faulted on each call, which in a VM can cost a
large share of an fp32 peer's time (the records carry each side's median minor page faults per call). A missing
peer is a one-line error and exit status 2, before anything runs.

On a CPU shared with other busy processes use --threads 1: OpenMP threads that spin at barriers while another
process holds their core make multi-threaded runs several times slower (OMP_WAIT_POLICY=PASSIVE in the
environment helps, but one thread was still faster on a 2-core machine with 2 other busy processes).

Workload groups (``--only`` names):

========== ======================================================================================== =====
name       what                                                                                     issue
========== ======================================================================================== =====
detr_infer DETR-R50 inference, 2 x 512 x 512 (vitkit bf16 / autocast / fp32 vs HF DETR fp32)       (a)
detr_train DETR-R50 training step, 2 x 512 x 512 (vitkit bf16-mixed / fp32 vs HF DETR fp32)         (b)
vit_forward ViT-B/16 forward, 8 x 224 x 224, fp32 and bf16 (vitkit vs timm, same weights)            (c)
caption    caption generation, 16 images x 20 tokens, greedy and beam 3 (vitkit vs HF ViT+GPT-2)   (d)
coco_eval  COCO eval, 2,000 images x ~80 detections (faster-coco-eval via vitkit vs pycocotools)     (e)
vit_memory peak RSS of a ViT-B/16 forward at 1024^2 and 2048^2, fresh process each (vitkit vs timm) (f)
gemm       bf16 (and fp32) 4096^3 GEMM: the peak that (a)-(c)'s FLOP/s are compared with            (g)
========== ======================================================================================== =====

``gemm`` runs first whenever one of (a)-(c) is selected, so their ``frac_of_bf16_gemm_peak`` always refers to
a peak measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks import caption, coco, detr, gemm, vit
from benchmarks.common import MissingPeerError, Settings, check_target, machine_info, retain_freed_memory

PROG = "python -m benchmarks.runner"
EXAMPLES = """run from the repository root of a source checkout; peers: pip install -e '.[bench]'

examples:
  {prog} --quick --threads 1                                     # a smoke test of every workload
  {prog} --only detr_infer,vit_forward --json-out bench.json --md-out bench.md
  {prog} --only coco_eval --reps 3 --note 'taken on a busy CPU'"""

# name -> (function, peer modules it needs)
WORKLOADS: dict[str, tuple[Callable[[Settings], list[dict[str, Any]]], tuple[str, ...]]] = {
    "gemm": (gemm.run, ()),
    "detr_infer": (detr.run_inference, ("transformers", "timm")),
    "detr_train": (detr.run_training, ("transformers", "timm")),
    "vit_forward": (vit.run_forward, ("timm",)),
    "caption": (caption.run, ("transformers",)),
    "coco_eval": (coco.run, ("pycocotools", "faster_coco_eval")),
    "vit_memory": (vit.run_memory, ("timm",)),
}
FLOP_WORKLOADS = ("detr_infer", "detr_train", "vit_forward")

MEMORY_LIMIT_MB = 4e9 / 2**20  # "under 4 GB": 4e9 bytes, in MiB like the RSS figures


def _speedup_at_least(x: float) -> Callable[[dict[str, Any]], bool | None]:
    def check(rec: dict[str, Any]) -> bool | None:
        return None if rec.get("speedup") is None else rec["speedup"] >= x

    return check


def _detr_infer_target(rec: dict[str, Any]) -> bool | None:
    frac = rec.get("frac_of_bf16_gemm_peak")
    if rec.get("speedup") is None or frac is None:
        return None
    return rec["speedup"] >= 4.0 and frac >= 0.6


def _coco_target(rec: dict[str, Any]) -> bool | None:
    return None if rec.get("speedup") is None else rec["speedup"] >= 8.0 and rec["stats_identical"]


def _memory_target(rec: dict[str, Any]) -> bool | None:
    peak = rec.get("vitkit_peak_rss_mb")
    return None if peak is None else peak < MEMORY_LIMIT_MB


# record workload -> (target text, check); the issue's "must show" list.
TARGETS: dict[str, tuple[str, Callable[[dict[str, Any]], bool | None]]] = {
    "detr_infer": (">= 4.0x HF fp32 eager and >= 60% of bf16 GEMM peak", _detr_infer_target),
    "detr_train": (">= 2.5x HF fp32 training step", _speedup_at_least(2.5)),
    "vit_forward_fp32": (">= 1.0x timm at equal dtype", _speedup_at_least(1.0)),
    "vit_forward_bf16": (">= 1.0x timm at equal dtype", _speedup_at_least(1.0)),
    "caption_greedy": (">= 2.0x HF generate", _speedup_at_least(2.0)),
    "caption_beam3": (">= 2.0x HF generate", _speedup_at_least(2.0)),
    "coco_eval": (">= 8x pycocotools with identical stats (bitwise)", _coco_target),
    "vit_memory_2048": ("vitkit peak RSS < 4 GB (4e9 bytes)", _memory_target),
}


def resolve(only: str | None) -> list[str]:
    """``--only`` value -> workload names in run order (gemm first when (a)-(c) need it)."""
    names = list(WORKLOADS) if not only else [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload(s) {unknown}; choose from {', '.join(WORKLOADS)}")
    if any(n in FLOP_WORKLOADS for n in names) and "gemm" not in names:
        names.append("gemm")
    return [n for n in WORKLOADS if n in names]


def check_peers(names: list[str]) -> None:
    """Fail before running anything when a selected workload's peer is not installed."""
    from benchmarks.common import require

    for name in names:
        for module in WORKLOADS[name][1]:
            require(module, name)


def run(names: list[str], settings: Settings, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    torch.set_num_threads(settings.threads)
    records: list[dict[str, Any]] = []
    for name in names:
        log(f"[benchmark] {name} ...")
        recs = WORKLOADS[name][0](settings)
        for r in recs:
            log(f"[benchmark]   {_one_line(r)}")
        records.extend(recs)
    peak = next((r["vitkit_tflops"] for r in records if r["workload"] == "gemm_bf16"), None)
    gemm.attach_flops(records, peak)
    for r in records:
        if r["workload"] in TARGETS:
            text, check = TARGETS[r["workload"]]
            check_target(r, text, check(r))
    return records


def _fmt(x: Any, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def _one_line(r: dict[str, Any]) -> str:
    parts = [r["workload"], f"vitkit {_fmt(r['vitkit_s'], '.4f')} s"]
    if r.get("peer_s") is not None:
        parts.append(f"peer {_fmt(r['peer_s'], '.4f')} s")
        parts.append(f"speedup {_fmt(r['speedup'], '.2f')}x")
    if "vitkit_peak_rss_mb" in r:
        parts.append(f"peak RSS vitkit {_fmt(r['vitkit_peak_rss_mb'], '.0f')} MiB / peer "
                     f"{_fmt(r.get('peer_peak_rss_mb'), '.0f')} MiB")
    if "vitkit_tflops" in r and r["workload"].startswith("gemm_"):
        parts.append(f"{r['vitkit_tflops']:.3f} TFLOP/s")
    return " | ".join(parts)


def write_json(records: list[dict[str, Any]], path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(records, indent=1) + "\n")


def markdown(records: list[dict[str, Any]], info: dict[str, Any], note: str | None = None) -> str:
    """The results as markdown: a header with date and machine, the comparison table, (g) and (f) tables."""
    lines = ["# vitkit benchmarks", ""]
    if note:
        lines += [f"> {note}", ""]
    lines += [
        f"- date: {info['date']}",
        f"- CPU: {info['cpu_model']} ({info['logical_cpus']} logical CPUs; {' '.join(info['cpu_flags']) or '-'})",
        f"- torch {info['torch']}, {info['threads']} thread(s), median of {info['reps']} interleaved repetitions "
        f"after {info['warmup']} warm-up run(s){', QUICK sizes (smoke test)' if info['quick'] else ''}",
        f"- load average at start: {', '.join(f'{x:.2f}' for x in info['load_average_at_start'] or [])}",
        f"- glibc malloc: {info['malloc']} (--malloc; 'default' page-faults every allocation of "
        "32 MiB or more on each call, 'retain' keeps freed memory in the heap; both sides alike)",
        "- speedup = peer_s / vitkit_s; all models have random weights; how each workload is built: the docstrings "
        "of benchmarks/*.py; every repetition's time and more fields: the JSON records",
        "",
        "| workload | vitkit dtype | batch | vitkit s | peer | peer s | speedup | target | met |",
        "|---|---|---|---:|---|---:|---:|---|---|",
    ]
    for r in records:
        if r["workload"].startswith(("gemm_", "vit_memory_")):
            continue
        batch = "x".join(str(v) for v in r["batch_shape"]) if r.get("batch_shape") else (
            f"{r.get('num_images')} img / {r.get('num_detections')} dets" if "num_images" in r else "-")
        met = {True: "yes", False: "**no**", None: "-"}[r.get("target_met")] if "target" in r else ""
        speed = f"{r['speedup']:.2f}x" if r.get("speedup") is not None else "-"
        lines.append(f"| {r['workload']} | {r.get('dtype', '-')} | {batch} | {_fmt(r['vitkit_s'], '.4f')} | "
                     f"{r.get('peer') or '-'} | {_fmt(r.get('peer_s'), '.4f')} | {speed} | {r.get('target', '')} | "
                     f"{met} |")
    faulted = [r for r in records if "vitkit_minor_faults" in r or "peer_minor_faults" in r]
    if faulted:
        lines += ["", "Minor page faults per timed call (median; each is a first touch of a fresh page, see --malloc):",
                  "", "| workload | vitkit | peer |", "|---|---:|---:|"]
        lines += [f"| {r['workload']} | {_fmt(r.get('vitkit_minor_faults'), '.0f')} | "
                  f"{_fmt(r.get('peer_minor_faults'), '.0f')} |" for r in faulted]
    coco_rec = [r for r in records if r["workload"] == "coco_eval"]
    for r in coco_rec:
        lines += ["", f"COCO eval: the 12 stats are bitwise identical: {r['stats_identical']} (max abs diff "
                      f"{r['stats_max_abs_diff']:.3g}); printed summaries identical: {r['summary_identical']}."]
    mem = [r for r in records if r["workload"].startswith("vit_memory_")]
    if mem:
        lines += ["", "## (f) Peak memory, ViT-B/16 forward, batch 1, bf16, fresh process per run", "",
                  "| size | vitkit peak RSS MiB | vitkit baseline RSS MiB | timm peak RSS MiB | timm baseline RSS MiB "
                  "| vitkit s | timm s | target | met |",
                  "|---|---:|---:|---:|---:|---:|---:|---|---|"]
        for r in mem:
            met = {True: "yes", False: "**no**", None: "-"}[r.get("target_met")] if "target" in r else ""
            size = r["batch_shape"][-1]
            lines.append(f"| {size}x{size} | {_fmt(r.get('vitkit_peak_rss_mb'), '.0f')} | "
                         f"{_fmt(r.get('vitkit_baseline_rss_mb'), '.0f')} | {_fmt(r.get('peer_peak_rss_mb'), '.0f')} | "
                         f"{_fmt(r.get('peer_baseline_rss_mb'), '.0f')} | {_fmt(r['vitkit_s'], '.2f')} | "
                         f"{_fmt(r.get('peer_s'), '.2f')} | {r.get('target', '')} | {met} |")
            for side in ("vitkit", "peer"):
                if f"{side}_error" in r:
                    lines.append(f"| {side} error: {r[side + '_error'][-300:]!r} ||||||||")
    gem = [r for r in records if r["workload"].startswith("gemm_")]
    flop = [r for r in records if r.get("gflop") is not None and not r["workload"].startswith("gemm_")]
    if gem or flop:
        lines += ["", "## (g) Achieved FLOP/s (FlopCounterMode on the vitkit model) vs the GEMM peak of this run", "",
                  "| workload | GFLOP | vitkit s | TFLOP/s | % of bf16 GEMM peak |", "|---|---:|---:|---:|---:|"]
        for r in gem:
            lines.append(f"| {r['workload']} {'x'.join(map(str, r['shape']))} | {r['gflop']:.1f} | "
                         f"{r['vitkit_s']:.4f} | {r['vitkit_tflops']:.3f} | "
                         f"{'(the peak)' if r['workload'] == 'gemm_bf16' else '(fp32 reference)'} |")
        for r in flop:
            frac = r.get("frac_of_bf16_gemm_peak")
            lines.append(f"| {r['workload']} | {r['gflop']:.1f} | {_fmt(r['vitkit_s'], '.4f')} | "
                         f"{_fmt(r.get('vitkit_tflops'))} | {'-' if frac is None else f'{100 * frac:.1f}%'} |")
    return "\n".join(lines) + "\n"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The command line's options."""
    p = argparse.ArgumentParser(prog=prog, description="vitkit vs peers, measured side by side.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=EXAMPLES.format(prog=prog))
    p.add_argument("--only", help=f"comma-separated workloads (default: all): {', '.join(WORKLOADS)}")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per variant (default 5; 2 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up runs per variant (default 2; 1 with --quick)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="torch threads for every variant (default: torch's default here, %(default)s)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    p.add_argument("--compile", action="store_true",
                   help="also time torch.compile'd vitkit variants (DETR inference; inductor with freezing)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", help="write the records as a JSON list to this file")
    p.add_argument("--md-out", help="write the markdown table to this file")
    p.add_argument("--note", help="a line to put at the top of the markdown (e.g. 'taken on a busy CPU')")
    p.add_argument("--profile-dir", help="write torch.profiler top-op tables of every variant here")
    p.add_argument("--malloc", choices=("default", "retain"), default="default",
                   help="glibc malloc behaviour for the whole run, vitkit and peers alike: 'default' maps each "
                        "allocation of 32 MiB or more afresh (page-faulted on every call); 'retain' keeps freed "
                        "memory in the heap (benchmarks.common.retain_freed_memory)")
    return p


def settings_from(args: argparse.Namespace) -> Settings | None:
    """The run's settings from the parsed options, or None for bad numbers."""
    reps = args.reps if args.reps is not None else (2 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if reps < 1 or warmup < 0 or args.threads < 1:
        return None
    return Settings(reps=reps, warmup=warmup, threads=args.threads, quick=args.quick, seed=args.seed,
                    compile=args.compile, malloc=args.malloc,
                    profile_dir=Path(args.profile_dir) if args.profile_dir else None)


def report(args: argparse.Namespace, names: list[str], settings: Settings) -> None:
    """Run the workloads, then print the markdown table and write --json-out / --md-out."""
    info = machine_info(settings)
    print(f"[benchmark] {info['cpu_model']}, torch {info['torch']}, {settings.threads} thread(s), "
          f"reps {settings.reps}, warm-up {settings.warmup}{', quick' if args.quick else ''}: {', '.join(names)}")
    records = run(names, settings)
    for r in records:
        r.setdefault("threads", settings.threads)
        r["malloc"] = settings.malloc
        if args.note:
            r["run_note"] = args.note
    if args.json_out:
        write_json(records, args.json_out)
    md = markdown(records, info, args.note)
    if args.md_out:
        Path(args.md_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md_out).write_text(md)
    print(md, end="")


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """Run the chosen workloads and report them.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
        prog: the command, for usage and error messages.

    Returns:
        The exit status: 0 done, 2 bad options or a missing peer.
    """
    args = build_parser(prog).parse_args(argv)
    settings = settings_from(args)
    if settings is None:
        print(f"{prog}: error: --reps and --threads must be >= 1, --warmup >= 0", file=sys.stderr)
        return 2
    try:
        names = resolve(args.only)
        check_peers(names)
    except (ValueError, MissingPeerError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    if args.malloc == "retain" and not retain_freed_memory():
        print(f"{prog}: error: --malloc retain needs glibc (mallopt); this C library refused it", file=sys.stderr)
        return 2
    report(args, names, settings)
    return 0


__all__ = ["TARGETS", "WORKLOADS", "MissingPeerError", "build_parser", "check_peers", "machine_info", "main",
           "markdown", "resolve", "run", "write_json"]

if __name__ == "__main__":
    sys.exit(main())
