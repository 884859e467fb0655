"""Benchmark vitkit against its peers (issue 5), side by side in one process.

    python tools/benchmark.py [--only detr_infer,vit_forward,...] [--reps 5] [--warmup 2] [--threads N]
                              [--quick] [--json-out FILE] [--md-out FILE] [--note TEXT] [--profile-dir DIR]
                              [--malloc default|retain]

Workloads: gemm, detr_infer, detr_train, vit_forward, caption, coco_eval, vit_memory (default: all; see
benchmarks/runner.py). Each one builds vitkit's model and its peer (random weights) with the same inputs and
thread count, warms up, then times them interleaved and reports medians; speedup = peer_s / vitkit_s.
--json-out writes the list of records, --md-out a markdown table with the date, CPU model, torch version and
threads. --quick uses tiny sizes (a smoke test; its numbers mean nothing). --profile-dir writes each timed
variant's top ops (torch.profiler, one extra run) as text files. --malloc retain keeps freed memory in glibc's
heap for the whole process (both sides): by default every allocation of 32 MiB or more is mapped afresh and
page-faulted on each call, which in a VM can cost a large share of an fp32 peer's time (the records carry
each side's median minor page faults per call).

Peers come from the "bench" extra: pip install -e ".[bench]". A missing peer is a one-line error and exit
status 2, before anything runs.

On a CPU shared with other busy processes use --threads 1: OpenMP threads that spin at barriers while another
process holds their core make multi-threaded runs several times slower (OMP_WAIT_POLICY=PASSIVE in the
environment helps, but one thread was still faster on a 2-core machine with 2 other busy processes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the benchmarks/ package lives at the repo root

import torch

from benchmarks.common import MissingPeerError, Settings, retain_freed_memory
from benchmarks.runner import WORKLOADS, check_peers, machine_info, markdown, resolve, run, write_json


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmark.py", description="vitkit vs peers, measured side by side.")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    reps = args.reps if args.reps is not None else (2 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if reps < 1 or warmup < 0 or args.threads < 1:
        print("benchmark.py: error: --reps and --threads must be >= 1, --warmup >= 0", file=sys.stderr)
        return 2
    try:
        names = resolve(args.only)
        check_peers(names)
    except (ValueError, MissingPeerError) as e:
        print(f"benchmark.py: error: {e}", file=sys.stderr)
        return 2
    if args.malloc == "retain" and not retain_freed_memory():
        print("benchmark.py: error: --malloc retain needs glibc (mallopt); this C library refused it",
              file=sys.stderr)
        return 2
    settings = Settings(reps=reps, warmup=warmup, threads=args.threads, quick=args.quick, seed=args.seed,
                        compile=args.compile, profile_dir=Path(args.profile_dir) if args.profile_dir else None,
                        malloc=args.malloc)
    info = machine_info(settings)
    print(f"[benchmark] {info['cpu_model']}, torch {info['torch']}, {settings.threads} thread(s), "
          f"reps {reps}, warm-up {warmup}{', quick' if args.quick else ''}: {', '.join(names)}")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
