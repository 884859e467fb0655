"""The GPU check's CPU dry run (issue 18): ``python -m benchmarks.gpu_check --tiny`` end to end, so the script
cannot rot.

It runs as a user would (a subprocess from the repository root) at tiny sizes on the CPU, without torch.compile
(inductor on the CPU would take minutes) and with the test subset narrowed to the matcher's bf16 case; then the JSON
and markdown must hold every section with sane values.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a subprocess running every section, ~20 s on an idle 2-core CPU

REPO = Path(__file__).resolve().parents[2]


def test_tiny_dry_run_writes_every_section(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--tiny", "--device", "cpu", "--no-compile", "--out",
           str(tmp_path), "--tests-path", "tests/detection/test_matcher.py", "--tests-k", "test_bf16_inputs_match_fp32"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert not result["errors"], result["errors"]
    info = result["info"]
    assert info["device"] == "cpu" and {"torch", "torchvision", "timm", "lightning", "transformers"} <= set(
        info["versions"]) and isinstance(info["missing_optional"], list)

    tests = result["tests"]
    assert tests["returncode"] == 0 and tests["passed"] == 2 and tests["failed"] == tests["errors"] == 0
    assert (tmp_path / "gpu_check_tests.log").exists()

    records = {r["workload"]: r for r in result["records"]}
    assert {"gemm_bf16", "gpu_train_detr_coco", "gpu_detr_train", "gpu_detr_infer", "gpu_vit_forward_bf16",
            "gpu_caption_greedy", "gpu_caption_beam3"} <= set(records)
    assert records["gemm_bf16"]["vitkit_tflops"] > 0
    train = records["gpu_train_detr_coco"]
    assert train["images_per_s"] > 0 and train["peak_memory_mib"] > 0 and train["steps"] == 4
    assert train["loss_finite"] and all(math.isfinite(x) for x in train["losses"])
    assert isinstance(train["loss_fell"], bool) and train["frac_of_bf16_gemm_peak"] > 0
    for name in ("gpu_detr_train", "gpu_detr_infer", "gpu_vit_forward_bf16", "gpu_caption_greedy"):
        r = records[name]
        assert r["vitkit_s"] > 0 and r["peer_s"] > 0 and r["speedup"] > 0 and "target" in r, name
        assert "_compiled" not in " ".join(records)  # --no-compile

    md = (tmp_path / "gpu_check.md").read_text()
    for heading in ("# vitkit GPU check", "## Tests on the device", "## Training: configs/detr_coco.yaml",
                    "## GEMM peak", "## Peers", "tiny sizes (dry run)"):
        assert heading in md, heading
