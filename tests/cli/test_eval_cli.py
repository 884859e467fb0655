"""tools/eval.py as a user types it: summary on stdout, --json-out, one-line errors with exit status 2."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tests.support.cli import run_main
from vitkit.cli import eval as eval_command
from vitkit.eval import STAT_KEYS

REPO = Path(__file__).resolve().parents[2]
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
    """tools/eval.py in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, str(EVAL), *args], capture_output=True, text=True, cwd=REPO, timeout=120)


@pytest.fixture
def run(capfd, monkeypatch):
    """The same command in this process (:func:`tests.support.cli.run_main`), from the repository root."""
    monkeypatch.chdir(REPO)
    return lambda *args: run_main(eval_command.main, args, capfd)


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


def test_cli_missing_file(tmp_path, run):
    gt_path, res_path, _ = _write_inputs(tmp_path)
    missing = tmp_path / "nope.json"
    for args in (("--annotations", str(missing), "--results", str(res_path)),
                 ("--annotations", str(gt_path), "--results", str(missing))):  # fmt: skip
        proc = run(*args)
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1 and str(missing) in proc.stderr and "not found" in proc.stderr
        assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_cli_malformed_results(tmp_path, run):
    gt_path, res_path, results = _write_inputs(tmp_path)
    bad = copy.deepcopy(results)
    del bad[3]["score"]
    res_path.write_text(json.dumps(bad))
    proc = run("--annotations", str(gt_path), "--results", str(res_path))
    assert proc.returncode == 2
    assert "results[3]: missing key 'score'" in proc.stderr and "Traceback" not in proc.stderr

    res_path.write_text(json.dumps({"image_id": 1}))
    proc = run("--annotations", str(gt_path), "--results", str(res_path))
    assert proc.returncode == 2 and "JSON list" in proc.stderr

    res_path.write_text("[{")
    proc = run("--annotations", str(gt_path), "--results", str(res_path))
    assert proc.returncode == 2 and "not valid JSON" in proc.stderr


def test_cli_checkpoint_mode_missing_checkpoint(tmp_path, run):
    proc = run("configs/detr_shapes.yaml", "--ckpt", str(tmp_path / "last.ckpt"))
    assert proc.returncode == 2 and "last.ckpt" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_needs_both_inputs(tmp_path, run):
    gt_path, _, _ = _write_inputs(tmp_path)
    proc = run("--annotations", str(gt_path))
    assert proc.returncode == 2 and "--results" in proc.stderr


# ------------------------------------------------------------------------------------------------ caption mode
CAPTION_NAMES = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D"]


def _write_caption_inputs(tmp_path: Path) -> tuple[Path, Path]:
    """COCO captions GT (two references for image 1) and results repeating one reference per image."""
    refs = {1: ["A dog runs on the grass.", "a dog running in a field"], 2: ["Two cats sleep on a red couch."],
            3: ["A man riding a wave on top of a surfboard."]}
    gt = {"images": [{"id": i} for i in refs],
          "annotations": [{"id": k, "image_id": i, "caption": c}
                          for k, (i, c) in enumerate((i, c) for i, cs in refs.items() for c in cs)]}
    res = [{"image_id": i, "caption": cs[0]} for i, cs in refs.items()]
    gt_path, res_path = tmp_path / "captions_val.json", tmp_path / "caption_res.json"
    gt_path.write_text(json.dumps(gt))
    res_path.write_text(json.dumps(res))
    return gt_path, res_path


def test_cli_caption_metrics(tmp_path, run):
    gt_path, res_path = _write_caption_inputs(tmp_path)
    out = tmp_path / "m" / "caption_metrics.json"
    proc = run("--captions-gt", str(gt_path), "--captions-results", str(res_path), "--no-java",
                "--json-out", str(out))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.rstrip("\n").split("\n")
    assert [line.split()[0] for line in lines] == CAPTION_NAMES
    assert lines[3] == "BLEU-4   1.0000" and lines[4] == "METEOR   skipped (--no-java)"
    metrics = json.loads(out.read_text())
    assert list(metrics) == ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"]
    assert metrics["Bleu_4"] == pytest.approx(1.0, abs=1e-6) and metrics["ROUGE_L"] == pytest.approx(1.0)
    assert metrics["CIDEr"] > 1.0


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs a Java runtime")
def test_cli_caption_metrics_with_java_meteor(tmp_path, run):
    gt_path, res_path = _write_caption_inputs(tmp_path)
    out = tmp_path / "caption_metrics.json"
    proc = run("--captions-gt", str(gt_path), "--captions-results", str(res_path), "--json-out", str(out))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.rstrip("\n").split("\n")
    assert [line.split()[0] for line in lines] == CAPTION_NAMES and lines[4] == "METEOR   1.0000"
    metrics = json.loads(out.read_text())
    assert metrics["METEOR"] == pytest.approx(1.0) and metrics["Bleu_4"] == pytest.approx(1.0, abs=1e-6)


def test_cli_caption_errors(tmp_path, run):
    gt_path, res_path = _write_caption_inputs(tmp_path)
    missing = tmp_path / "nope.json"
    bad_json, not_list, unknown_id = tmp_path / "bad.json", tmp_path / "dict.json", tmp_path / "unknown.json"
    bad_json.write_text("[{")
    not_list.write_text(json.dumps({"image_id": 1, "caption": "a dog"}))
    unknown_id.write_text(json.dumps([{"image_id": 99, "caption": "a dog"}]))
    cases = [
        (("--captions-gt", str(missing), "--captions-results", str(res_path)), "not found"),
        (("--captions-gt", str(gt_path), "--captions-results", str(missing)), "not found"),
        (("--captions-gt", str(gt_path), "--captions-results", str(bad_json)), "not valid JSON"),
        (("--captions-gt", str(gt_path), "--captions-results", str(not_list)), "JSON list"),
        (("--captions-gt", str(gt_path), "--captions-results", str(unknown_id)), "no reference captions"),
        (("--captions-gt", str(res_path), "--captions-results", str(res_path)), "no 'annotations' list"),
        (("--captions-gt", str(gt_path)), "--captions-results"),
        (("--captions-gt", str(gt_path), "--captions-results", str(res_path), "--annotations", str(gt_path)),
         "one mode at a time"),
    ]
    for args, message in cases:
        proc = run(*args, "--no-java")
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert message in proc.stderr, (args, proc.stderr)
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr and proc.stdout == ""
