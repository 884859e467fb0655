"""Smoke tests of the benchmark harness (``python -m benchmarks.runner`` from the repository root, a checkout tool):
record format, markdown, a clear error when a peer is missing or an option is wrong, and the synthetic COCO set's
stats agreeing across the two eval backends.

No timing assertions: benchmarks are not tests (docs/design.md, testing); these only check that the harness runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNNER = [sys.executable, "-m", "benchmarks.runner"]  # as a user runs it, from the repository root
RECORD_KEYS = {"workload", "vitkit_s", "peer", "peer_s", "speedup"}


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*RUNNER, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=300)


def _check_records(recs: list[dict]) -> None:
    for r in recs:
        assert set(r) >= RECORD_KEYS, r
        assert r["vitkit_s"] > 0 and r["threads"] == 1
        if r["peer"] is not None:
            assert r["peer_s"] > 0
            assert r["speedup"] == pytest.approx(r["peer_s"] / r["vitkit_s"])
            assert len(r["vitkit_times_s"]) == len(r["peer_times_s"]) == 1


def test_quick_run_writes_json_records_and_markdown(tmp_path):
    js, md = tmp_path / "out" / "bench.json", tmp_path / "bench.md"
    p = _run(["--quick", "--threads", 1, "--reps", 1, "--warmup", 0, "--only", "vit_forward,coco_eval",
              "--json-out", js, "--md-out", md, "--note", "smoke test, numbers mean nothing", "--malloc", "retain"])
    assert p.returncode == 0, p.stderr[-3000:]
    recs = json.loads(js.read_text())
    # gemm joins automatically: (g) needs a peak measured in the same run as (c)
    assert [r["workload"] for r in recs] == ["gemm_bf16", "gemm_fp32", "vit_forward_fp32", "vit_forward_bf16",
                                             "coco_eval"]
    _check_records(recs)
    vit = {r["workload"]: r for r in recs}
    for d in ("fp32", "bf16"):
        r = vit[f"vit_forward_{d}"]
        assert r["dtype"] == r["peer_dtype"] == d and r["batch_shape"] == [1, 3, 64, 64]
        assert r["gflop"] > 0 and r["vitkit_tflops"] > 0 and r["frac_of_bf16_gemm_peak"] > 0
        assert r["target"] and isinstance(r["target_met"], bool)
        assert r["vitkit_minor_faults"] >= 0 and r["peer_minor_faults"] >= 0  # counted per timed call
    assert {r["malloc"] for r in recs} == {"retain"}
    assert vit["vit_forward_fp32"]["max_abs_output_diff"] < 1e-3  # same weights on both sides
    coco = vit["coco_eval"]
    assert coco["stats_max_abs_diff"] < 1e-12 and coco["summary_identical"]
    assert coco["num_images"] == 20 and coco["num_detections"] > 0

    text = md.read_text()
    assert "smoke test, numbers mean nothing" in text
    assert "glibc malloc: retain" in text
    assert "| workload |" in text and "torch " in text and "1 thread(s)" in text and "CPU: " in text
    for r in recs:
        assert r["workload"] in text
    assert text == p.stdout[p.stdout.index("# vitkit benchmarks"):]  # the same table goes to stdout


def test_missing_transformers_is_a_clear_error(tmp_path):
    fake = tmp_path / "hide" / "transformers"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("transformers hidden by the test")\n')
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "hide")}
    p = _run(["--quick", "--only", "coco_eval,caption"], env=env)
    assert p.returncode == 2
    assert "'caption'" in p.stderr and "transformers" in p.stderr and ".[bench]" in p.stderr
    assert "[benchmark] coco_eval" not in p.stdout  # nothing ran


def test_workload_selection():
    from benchmarks.runner import resolve

    assert resolve("coco_eval") == ["coco_eval"]
    assert resolve("vit_forward,detr_infer") == ["gemm", "detr_infer", "vit_forward"]  # (g) needs the GEMM peak
    with pytest.raises(ValueError, match="unknown workload"):
        resolve("nope")


@pytest.mark.parametrize("args", [["--reps", "0"], ["--warmup", "-1"], ["--threads", "0"], ["--only", "nope"]])
def test_bad_options_are_a_one_line_error(args, capsys):
    from benchmarks.runner import PROG, main

    assert main(args) == 2  # in process: nothing runs before the options are checked
    err = capsys.readouterr().err
    assert err.startswith(f"{PROG}: error: ") and err.count("\n") == 1


def test_quick_caption_generates_the_same_token_count_on_both_sides(tmp_path):
    pytest.importorskip("transformers")
    js = tmp_path / "cap.json"
    p = _run(["--quick", "--threads", 1, "--reps", 1, "--warmup", 0, "--only", "caption", "--json-out", js])
    assert p.returncode == 0, p.stderr[-3000:]
    recs = json.loads(js.read_text())
    assert [r["workload"] for r in recs] == [f"caption_{m}{s}" for m in ("greedy", "beam3")
                                             for s in ("", "_fp32", "_bf16")]
    _check_records(recs)
    for r in recs:
        assert set(r["new_tokens"].values()) == {3}  # --quick forces 3 new tokens on every side
        assert not any(r["eos_generated"].values())


def test_synthetic_coco_same_stats_on_both_backends(tmp_path):
    from benchmarks.coco import compare_stats, pycocotools_stats, synthetic_coco, vitkit_stats

    gt, results = synthetic_coco(num_images=30, dets_per_image=20, seed=0)
    again = synthetic_coco(num_images=30, dets_per_image=20, seed=0)
    assert (gt, results) == again  # deterministic
    assert len(gt["categories"]) == 80 and {a["iscrowd"] for a in gt["annotations"]} <= {0, 1}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    ours = vitkit_stats(path, results)
    ref = pycocotools_stats(path, [dict(r) for r in results])
    assert ours.shape == ref.shape == (12,) and np.all(ref > 0)  # every area bucket populated
    cmp = compare_stats(ours, ref)
    # faster-coco-eval's tp / (tp + fp) vs pycocotools' tp / (tp + fp + eps): equal up to ~1e-16, same summary
    assert cmp["stats_max_abs_diff"] <= 1e-15 and cmp["summary_identical"]


_FAULTS_SCRIPT = """
import json, sys, torch
from benchmarks.common import minor_faults, retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
faults = []
for _ in range(3):  # both above glibc's largest automatic mmap threshold (32 MiB); the second fits in the first
    for numel in (16 << 20, 12 << 20):  # 64 MiB, then 48 MiB of float32
        f0 = minor_faults()
        t = torch.ones(numel)
        del t
        faults.append(minor_faults() - f0)
print(json.dumps(faults))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt and getrusage page faults: Linux")
def test_retain_freed_memory_reuses_freed_pages_for_large_allocations():
    def faults(mode: str) -> list[int]:
        p = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT, mode], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 0, p.stderr[-2000:]
        return json.loads(p.stdout)

    default, retained = faults("default"), faults("retain")
    # 48 MiB in 4 KiB pages is 12288 faults; even with 2 MiB huge pages it would be 24
    assert min(default[1::2]) >= 24  # glibc's default: mapped afresh and faulted on every allocation
    assert max(retained[1::2]) < 24  # served from the pages the 64 MiB tensor touched and freed
