"""Benchmark vitkit against its peers (issue 5), side by side in one process: ``vitkit benchmark``
(``tools/benchmark.py``).

    vitkit benchmark [--only detr_infer,vit_forward,...] [--reps 5] [--warmup 2] [--threads N]
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

The workloads live in the ``benchmarks/`` folder of a vitkit source checkout, which is not installed with the
package: the command finds it beside the installed ``vitkit/`` folder (an editable install) or in the working
folder, and otherwise stops with exit status 2 saying so. Peers come from the "bench" extra:
pip install -e ".[bench]". A missing peer is a one-line error and exit status 2, before anything runs.

On a CPU shared with other busy processes use --threads 1: OpenMP threads that spin at barriers while another
process holds their core make multi-threaded runs several times slower (OMP_WAIT_POLICY=PASSIVE in the
environment helps, but one thread was still faster on a 2-core machine with 2 other busy processes).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

PROG = "vitkit benchmark"
CHECKOUT_HINT = ("the benchmarks/ folder of a vitkit source checkout (not installed with the package): clone the "
                 "repository, pip install -e '.[bench]' there and run vitkit benchmark (or python "
                 "tools/benchmark.py) inside it")
EXAMPLES = """needs """ + CHECKOUT_HINT + """

examples:
  {prog} --quick --threads 1                                     # a smoke test of every workload
  {prog} --only detr_infer,vit_forward --json-out bench.json --md-out bench.md
  {prog} --only coco_eval --reps 3 --note 'taken on a busy CPU'"""


def find_benchmarks() -> tuple[ModuleType, ModuleType] | None:
    """``benchmarks.common`` and ``benchmarks.runner`` from a vitkit source checkout, or None when there is none.

    The checkout is the folder above the imported ``vitkit/`` package (an editable install), else the working
    folder; it is put first on ``sys.path`` so that its ``benchmarks`` package is the one imported.
    """
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (root / "benchmarks" / "runner.py").is_file():
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
            # by name: benchmarks/ is no dependency of the package, only of this command in a checkout
            return importlib.import_module("benchmarks.common"), importlib.import_module("benchmarks.runner")
    return None


def build_parser(prog: str = PROG, workloads: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The options of ``benchmark`` (``workloads``: the names --only takes, when the benchmarks were found)."""
    p = argparse.ArgumentParser(prog=prog, description="vitkit vs peers, measured side by side.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=EXAMPLES.format(prog=prog))
    names = ", ".join(workloads) if workloads else "see benchmarks/runner.py"
    p.add_argument("--only", help=f"comma-separated workloads (default: all): {names}")
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


def _settings(args: argparse.Namespace, common: ModuleType, prog: str) -> Any:
    """The run's ``benchmarks.common.Settings``, or None (after an error on stderr) for bad numbers."""
    reps = args.reps if args.reps is not None else (2 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if reps < 1 or warmup < 0 or args.threads < 1:
        print(f"{prog}: error: --reps and --threads must be >= 1, --warmup >= 0", file=sys.stderr)
        return None
    return common.Settings(reps=reps, warmup=warmup, threads=args.threads, quick=args.quick, seed=args.seed,
                           compile=args.compile, malloc=args.malloc,
                           profile_dir=Path(args.profile_dir) if args.profile_dir else None)


def _run(args: argparse.Namespace, names: list[str], settings: Any, runner: ModuleType) -> None:
    """Run the workloads, then print the markdown table and write --json-out / --md-out."""
    info = runner.machine_info(settings)
    print(f"[benchmark] {info['cpu_model']}, torch {info['torch']}, {settings.threads} thread(s), "
          f"reps {settings.reps}, warm-up {settings.warmup}{', quick' if args.quick else ''}: {', '.join(names)}")
    records = runner.run(names, settings)
    for r in records:
        r.setdefault("threads", settings.threads)
        r["malloc"] = settings.malloc
        if args.note:
            r["run_note"] = args.note
    if args.json_out:
        runner.write_json(records, args.json_out)
    md = runner.markdown(records, info, args.note)
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
        The exit status: 0 done, 2 bad options, a missing peer or no benchmarks/ folder.
    """
    found = find_benchmarks()
    args = build_parser(prog, list(found[1].WORKLOADS) if found else None).parse_args(argv)
    if found is None:
        print(f"{prog}: error: the workloads were not found; this command needs {CHECKOUT_HINT}", file=sys.stderr)
        return 2
    common, runner = found
    settings = _settings(args, common, prog)
    if settings is None:
        return 2
    try:
        names = runner.resolve(args.only)
        runner.check_peers(names)
    except (ValueError, common.MissingPeerError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    if args.malloc == "retain" and not common.retain_freed_memory():
        print(f"{prog}: error: --malloc retain needs glibc (mallopt); this C library refused it", file=sys.stderr)
        return 2
    _run(args, names, settings, runner)
    return 0
