"""How fast the ``vitkit`` command starts (issue 30): cold runs, each a fresh process, of

- ``vitkit --help`` (target: under 1.0 s on an idle 2-core CPU),
- ``vitkit caption --help`` (target: under 2.0 s),
- ``python -c "import vitkit"``,
- ``python -c "import torch"``: the floor every command that computes pays, the peer of this benchmark.

Every repetition runs each command once, back to back (interleaved, so a change in machine load hits all of them
alike), after ``--warmup`` untimed rounds that fill the page cache. The report is each command's median wall time
and its ratio to the torch import. The ``vitkit`` script is the one installed beside this interpreter
(``pip install -e .``); the commands run from a scratch folder, as a user would type them::

    python -m benchmarks.cli_startup [--runs 5] [--warmup 1] [--json-out benchmarks/results/cli_startup.json]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import cpu_model

REPO_ROOT = Path(__file__).resolve().parent.parent
VITKIT = Path(sys.executable).parent / "vitkit"
PEER = "import torch"
# name -> (command, target seconds or None)
COMMANDS: dict[str, tuple[list[str], float | None]] = {
    "vitkit --help": ([str(VITKIT), "--help"], 1.0),
    "vitkit caption --help": ([str(VITKIT), "caption", "--help"], 2.0),
    "import vitkit": ([sys.executable, "-c", "import vitkit"], None),
    PEER: ([sys.executable, "-c", "import torch"], None),
}


def time_once(command: list[str], cwd: Path) -> float:
    """Wall seconds of one fresh process running ``command``.

    Raises:
        RuntimeError: the command failed (its stderr's end in the message).
    """
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: exit status {proc.returncode}: {proc.stderr[-2000:]}")
    return seconds


def measure(runs: int, warmup: int) -> dict[str, list[float]]:
    """Each command's times over ``runs`` interleaved repetitions, after ``warmup`` untimed ones."""
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    with tempfile.TemporaryDirectory(prefix="cli_startup_") as tmp:
        for rep in range(warmup + runs):
            for name, (command, _) in COMMANDS.items():
                seconds = time_once(command, Path(tmp))
                if rep >= warmup:
                    times[name].append(seconds)
    return times


def records(times: dict[str, list[float]]) -> list[dict[str, Any]]:
    """One record per command: median, min, max, every time, the ratio to the torch import, the target."""
    floor = statistics.median(times[PEER])
    out = []
    for name, (command, target) in COMMANDS.items():
        median = statistics.median(times[name])
        rec = {"command": name, "argv": [Path(command[0]).name, *command[1:]], "median_s": round(median, 4),
               "min_s": round(min(times[name]), 4), "max_s": round(max(times[name]), 4),
               "times_s": [round(t, 4) for t in times[name]], "ratio_to_import_torch": round(median / floor, 3)}
        if target is not None:
            rec.update(target=f"< {target:g} s (idle 2-core CPU)", target_met=median < target)
        out.append(rec)
    return out


def machine() -> dict[str, Any]:
    """Date, CPU, load and versions of this run."""
    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpu_model": cpu_model(), "logical_cpus": os.cpu_count(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "python": platform.python_version(), "torch": version("torch"), "vitkit": version("vitkit")}


def table(recs: list[dict[str, Any]]) -> str:
    """The report: one line per command."""
    lines = [f"{'command':<24} {'median s':>9} {'min s':>7} {'max s':>7} {'x torch':>8}  target"]
    for r in recs:
        met = "" if "target" not in r else f"{r['target']}: {'met' if r['target_met'] else 'NOT met'}"
        lines.append(f"{r['command']:<24} {r['median_s']:9.3f} {r['min_s']:7.3f} {r['max_s']:7.3f} "
                     f"{r['ratio_to_import_torch']:8.2f}  {met}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure, print the table, write the JSON; returns what was written."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.cli_startup", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5, help="timed runs of each command (default 5; the median counts)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    p.add_argument("--json-out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "cli_startup.json")
    p.add_argument("--note", help="a line kept with the results (e.g. 'taken on a busy CPU')")
    args = p.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        p.error("--runs must be >= 1, --warmup >= 0")
    if not VITKIT.is_file():
        p.error(f"no vitkit script at {VITKIT}: run `pip install -e .` first")
    info = machine()
    recs = records(measure(args.runs, args.warmup))
    info["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result = {"benchmark": "cli startup", "runs": args.runs, "warmup": args.warmup, "note": args.note,
              "machine": info, "records": recs}
    print(f"[cli_startup] {info['cpu_model']}, {info['logical_cpus']} CPUs, load {info['load_average']}, "
          f"median of {args.runs} cold runs")
    print(table(recs))
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json_out}")
    return result


if __name__ == "__main__":
    main()
