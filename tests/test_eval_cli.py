"""tools/eval.py as a user types it: summary on stdout, --json-out, one-line errors with exit status 2."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from vitkit.eval import STAT_KEYS

REPO = Path(__file__).resolve().parents[1]
EVAL = REPO / "tools" / "eval.py"


def _write_inputs(tmp_path: Path) -> tuple[Path, Path, list[dict[str, Any]]]:
    """A small GT (categories 2 and 5, a crowd region, an image without objects) and jittered detections."""
    rng = np.random.default_rng(0)
    images, anns, results = [], [], []
    for i in range(8):
        images.append({"id": i + 1, "width": 320, "height": 240, "file_name": f"{i + 1}.jpg"})
        if i == 7:
            continue
        for _ in range(3):
            w, h = rng.uniform(8, 150, 2)
            x, y = rng.uniform(0, 320 - w), rng.uniform(0, 240 - h)
            cat = int(rng.choice([2, 5]))
            box = [float(x), float(y), float(w), float(h)]
            crowd = int(len(anns) == 4)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": cat,
                    "bbox": box,
                    "area": float(w * h * 0.7),
                    "iscrowd": crowd,
                }
            )
            det = [v + float(rng.normal(0, 4)) for v in box]
            results.append({"image_id": i + 1, "category_id": cat, "bbox": det, "score": float(rng.random())})
    gt = {"images": images, "annotations": anns, "categories": [{"id": 2, "name": "a"}, {"id": 5, "name": "b"}]}
    gt_path, res_path = tmp_path / "gt.json", tmp_path / "res.json"
    gt_path.write_text(json.dumps(gt))
    res_path.write_text(json.dumps(results))
    return gt_path, res_path, results


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EVAL), *args], capture_output=True, text=True, cwd=REPO, timeout=120)


def _pycocotools_stats(gt_path: Path, results: list[dict[str, Any]]) -> list[float]:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        ev = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats]


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_cli_summary_and_json(tmp_path, backend):
    gt_path, res_path, results = _write_inputs(tmp_path)
    out = tmp_path / "out" / "stats.json"
    proc = _run("--annotations", str(gt_path), "--results", str(res_path), "--backend", backend, "--json-out", str(out))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.rstrip("\n").split("\n")
    assert len(lines) == 12
    assert all(line.startswith(" Average Precision  (AP) @[ IoU=") for line in lines[:6])
    assert all(line.startswith(" Average Recall     (AR) @[ IoU=") for line in lines[6:])
    stats = json.loads(out.read_text())
    assert tuple(stats) == STAT_KEYS
    expected = _pycocotools_stats(gt_path, results)
    if backend == "pycocotools":
        assert [stats[k] for k in STAT_KEYS] == expected
    else:  # faster-coco-eval: tp / (tp + fp) where pycocotools adds np.spacing(1) (see test_coco_eval.py)
        assert [stats[k] for k in STAT_KEYS] == pytest.approx(expected, rel=0, abs=1e-15)
    assert 0.0 < stats["AP"] < 1.0
    assert lines[0].endswith(f"= {expected[0]:0.3f}")


def test_cli_missing_file(tmp_path):
    gt_path, res_path, _ = _write_inputs(tmp_path)
    missing = tmp_path / "nope.json"
    for args in (("--annotations", str(missing), "--results", str(res_path)),
                 ("--annotations", str(gt_path), "--results", str(missing))):  # fmt: skip
        proc = _run(*args)
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1 and str(missing) in proc.stderr and "not found" in proc.stderr
        assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_cli_malformed_results(tmp_path):
    gt_path, res_path, results = _write_inputs(tmp_path)
    bad = copy.deepcopy(results)
    del bad[3]["score"]
    res_path.write_text(json.dumps(bad))
    proc = _run("--annotations", str(gt_path), "--results", str(res_path))
    assert proc.returncode == 2
    assert "results[3]: missing key 'score'" in proc.stderr and "Traceback" not in proc.stderr

    res_path.write_text(json.dumps({"image_id": 1}))
    proc = _run("--annotations", str(gt_path), "--results", str(res_path))
    assert proc.returncode == 2 and "JSON list" in proc.stderr

    res_path.write_text("[{")
    proc = _run("--annotations", str(gt_path), "--results", str(res_path))
    assert proc.returncode == 2 and "not valid JSON" in proc.stderr


def test_cli_checkpoint_mode_missing_checkpoint(tmp_path):
    proc = _run("configs/detr_shapes.yaml", "--ckpt", str(tmp_path / "last.ckpt"))
    assert proc.returncode == 2 and "last.ckpt" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_needs_both_inputs(tmp_path):
    gt_path, _, _ = _write_inputs(tmp_path)
    proc = _run("--annotations", str(gt_path))
    assert proc.returncode == 2 and "--results" in proc.stderr
