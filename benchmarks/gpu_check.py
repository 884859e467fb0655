"""Proven on a GPU (issue 18): one prepared check that runs in at most ~7 minutes on one GPU.

In order, each section writing ``gpu_check.json`` and ``gpu_check.md`` under ``--out`` as it ends (so a run cut
short still leaves what it measured):

1. **env**: versions (torch, torchvision, timm, lightning, transformers, ...), the GPU, and which optional packages
   are missing. ``--wheels DIR`` first installs the wheels in DIR (``pip install --no-index --no-deps --target``,
   put first on ``PYTHONPATH``; the check then starts afresh in a new interpreter that sees them);
   ``python -m benchmarks.gpu_wheels .whl`` fetches them here: jsonargparse (+ docstring-parser, typeshed-client,
   importlib-resources; the training code needs it), pycocotools and faster-coco-eval (the bf16 AP guard),
   pycocoevalcap without its Java jars (the caption module imports it).
2. **tests**: ``pytest -m device -k <device>``, the device-parametrised subset (tests/support/devices.py): attention
   masks and the KV cache, deformable attention, the matcher under bf16, padding invariance, one detection and one
   caption training step, bf16 inference with its AP guard; pass/fail counts and the failures' messages.
3. **gemm**: the bf16 (and fp32) GEMM peak of this device (:func:`benchmarks.gemm.measure`), the yardstick of MFU.
4. **train**: the model of configs/detr_coco.yaml, bf16-mixed, the largest batch that fits
   (:mod:`benchmarks.gpu_train`): images/s, peak memory, the loss falling, MFU (its FLOP/s as a fraction of the
   bf16 GEMM peak).
5. **peers** (:mod:`benchmarks.gpu_peers`): DETR-R50 train step and inference vs Hugging Face DETR, ViT-B/16 at
   batch 64 vs timm, caption generation vs Hugging Face ``generate``; each also with ``torch.compile``.

``--tiny``: tiny sizes, few steps, one torch thread, on the CPU unless ``--device`` says otherwise (the dry run of
tests/benchmarks/test_gpu_check.py). Through the device tool, from the repository root::

    python -m benchmarks.gpu_wheels .whl          # here, once
    # device tool: carry [".whl"], command:
    PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu_check --wheels .whl --out $OUT
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
WHEELS_TARGET = Path(tempfile.gettempdir()) / "vitkit_gpu_check_site"

VERSIONS = ("torch", "torchvision", "timm", "lightning", "transformers", "onnxruntime", "numpy", "scipy", "pytest")
OPTIONAL = ("jsonargparse", "docstring_parser", "typeshed_client", "pycocotools", "faster_coco_eval", "pycocoevalcap")
SECTIONS = ("tests", "gemm", "train", "detr_train", "detr_infer", "vit_forward", "caption")
TARGETS = {"gpu_detr_train": (">= 1.5x HF DETR (bf16 autocast)", 1.5), "gpu_detr_infer": (">= 2x HF DETR", 2.0),
           "gpu_vit_forward_bf16": (">= 1.0x timm, equal dtype", 1.0),
           "gpu_caption_greedy": (">= 2x HF generate", 2.0), "gpu_caption_beam3": (">= 2x HF generate", 2.0)}


def install_wheels(folder: Path, target: Path) -> None:
    """pip-install every wheel in ``folder`` into ``target`` (no index, no dependencies) and put it first on
    ``PYTHONPATH`` (for the interpreter :func:`main` restarts, and its subprocesses)."""
    wheels = sorted(str(p) for p in folder.glob("*.whl"))
    if wheels:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(target), *wheels], check=True)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(target), os.environ.get("PYTHONPATH")) if p)


def environment(device: str) -> dict[str, Any]:
    """Package versions, missing optional packages, the device and the machine."""
    import torch

    from benchmarks.common import machine_facts

    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    info = {**machine_facts(torch.get_num_threads()), "device": device,
            "versions": {n: version(n) for n in VERSIONS},
            "missing_optional": [n for n in OPTIONAL if importlib.util.find_spec(n) is None]}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    gpu_capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


def run_tests(device: str, extra_k: str | None, timeout: float, log: Path, path: str = "tests") -> dict[str, Any]:
    """The device-parametrised subset on ``device`` in a pytest subprocess; counts from its JUnit XML."""
    expr = torch_type(device) + (f" and ({extra_k})" if extra_k else "")
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", path, "-m", "device", "-k", expr, "-q", "-p", "no:cacheprovider",
               f"--junitxml={junit}"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH"))
                                                            if p)}
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
            output, rc = proc.stdout + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as e:
            output, rc = f"{e.stdout or ''}{e.stderr or ''}\n[gpu_check] pytest timed out after {timeout} s", None
        log.write_text(output if isinstance(output, str) else output.decode(errors="replace"))
        out: dict[str, Any] = {"command": " ".join(cmd[1:]), "returncode": rc,
                               "seconds": round(time.perf_counter() - t0, 1), "log": log.name}
        if junit.exists():
            out.update(_junit_counts(junit))
    return out


def _junit_counts(path: Path) -> dict[str, Any]:
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = []
    for case in suite.iter("testcase"):
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if bad is not None:
            failed.append({"test": f"{case.get('classname')}::{case.get('name')}",
                           "message": (bad.get("message") or "")[:400]})
    return {"passed": n["tests"] - n["failures"] - n["errors"] - n["skipped"], "failed": n["failures"],
            "errors": n["errors"], "skipped": n["skipped"], "failures": failed}


def torch_type(device: str) -> str:
    return device.split(":")[0]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_out = os.environ.get("OUT") or REPO_ROOT / "benchmarks" / "results" / "gpu_check"
    p.add_argument("--out", type=Path, default=Path(default_out), help="default: $OUT, else " + str(default_out))
    p.add_argument("--tiny", action="store_true", help="tiny sizes and few steps (CPU dry run)")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--wheels", type=Path, default=None, help="install the wheels in this folder first")
    p.add_argument("--skip", default="", help=f"comma-separated sections to skip: {','.join(SECTIONS)}")
    p.add_argument("--no-compile", action="store_true", help="no torch.compile variants")
    p.add_argument("--tests-k", default=None, help="narrow the test subset further (a pytest -k expression)")
    p.add_argument("--tests-timeout", type=float, default=180.0)
    p.add_argument("--tests-path", default="tests", help="where pytest looks (default: the whole suite)")
    p.add_argument("--train-batch", type=int, default=None, help="default: the largest power of two that fits")
    p.add_argument("--max-batch", type=int, default=None)
    p.add_argument("--train-steps", type=int, default=None)
    p.add_argument("--budget-s", type=float, default=360.0, help="compile variants start only with 90 s of this left")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the check; returns the result written to ``--out/gpu_check.json``."""
    args = parse_args(argv)
    start = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.wheels and str(WHEELS_TARGET) not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        install_wheels(args.wheels, WHEELS_TARGET)
        sys.stdout.flush()
        sys.stderr.flush()
        # start afresh with the wheels on PYTHONPATH (this restart sees them there and installs nothing)
        os.execv(sys.executable, [sys.executable, "-m", "benchmarks.gpu_check",
                                  *(sys.argv[1:] if argv is None else argv)])
    import torch

    from benchmarks import gpu_report

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.tiny:
        torch.set_num_threads(1)
    skip = {x.strip() for x in args.skip.split(",") if x.strip()}
    result: dict[str, Any] = {"info": environment(device), "options": {k: str(v) for k, v in vars(args).items()},
                              "records": [], "errors": {}}
    print(f"[gpu_check] {json.dumps(result['info']['versions'])}; missing: {result['info']['missing_optional']}")

    def save() -> None:
        result["elapsed_s"] = round(time.monotonic() - start, 1)
        gpu_report.write(result, args.out)

    save()
    if "tests" not in skip:
        result["tests"] = run_tests(device, args.tests_k, args.tests_timeout, args.out / "gpu_check_tests.log",
                                    args.tests_path)
        print(f"[gpu_check] tests: {json.dumps({k: v for k, v in result['tests'].items() if k != 'failures'})}")
        save()
    _measure(args, device, start, skip, result, save)
    return result


def _settings(args: argparse.Namespace, device: str, start: float) -> Any:
    from benchmarks.gpu_peers import GpuSettings

    kw: dict[str, Any] = {"compile": not args.no_compile, "deadline": start + args.budget_s}
    for key in ("train_batch", "max_batch", "train_steps"):
        if getattr(args, key) is not None:
            kw[key] = getattr(args, key)
    return GpuSettings.tiny_settings(device, **kw) if args.tiny else GpuSettings(device=device, **kw)


def _measure(args: argparse.Namespace, device: str, start: float, skip: set[str], result: dict[str, Any],
             save: Any) -> None:
    """Sections 3-5, each guarded: an exception is recorded under ``errors`` and the next section runs."""
    from benchmarks import gemm, gpu_train
    from benchmarks.common import check_target
    from benchmarks.gpu_peers import PEERS

    s = _settings(args, device, start)
    jobs: list[tuple[str, Any]] = [("gemm", lambda: gemm.measure(128 if s.tiny else 8192, device, 3 if s.tiny else 10,
                                                                   1 if s.tiny else 3, s.seed)),
                                   ("train", lambda: [gpu_train.run(s)])]
    jobs += list(PEERS.items())
    for name, job in jobs:
        if name in skip:
            continue
        t0 = time.monotonic()
        print(f"[gpu_check] {name} ...", flush=True)
        try:
            recs = job() if name in ("gemm", "train") else job(s)
        except Exception:
            result["errors"][name] = traceback.format_exc()[-3000:]
            print(f"[gpu_check] {name} failed:\n{result['errors'][name]}", flush=True)
            recs = []
        for r in recs:
            r["section_s"] = round(time.monotonic() - t0, 1)
            if r["workload"] in TARGETS:
                text, x = TARGETS[r["workload"]]
                check_target(r, text, None if r.get("speedup") is None else r["speedup"] >= x)
            print(f"[gpu_check]   {r['workload']}: vitkit {r.get('vitkit_s')} s, peer {r.get('peer_s')} s, "
                  f"speedup {r.get('speedup')}", flush=True)
        result["records"].extend(recs)
        gemm.attach_flops(result["records"], next((r["vitkit_tflops"] for r in result["records"]
                                                   if r["workload"] == "gemm_bf16"), None))
        save()


if __name__ == "__main__":
    if not __package__:  # run as a file: the benchmarks package is found from the repository root only
        sys.exit("gpu_check: run it as a module from the repository root: python -m benchmarks.gpu_check ...")
    main()
