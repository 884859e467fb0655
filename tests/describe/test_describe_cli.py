"""``vitkit describe`` (tools/describe.py) as a user runs it: one record per good image, a corrupt image reported and
skipped, resuming without redoing images, drawn pictures, and boxes given in a COCO results file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.cli import run_main
from tests.support.tiny_checkpoints import CLASS_NAMES, save_detector
from tests.support.tiny_describe import save_describer
from vitkit.cli import describe
from vitkit.cli.main import commands

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]
FAST = ["--threshold", "0", "--max-detections", "2", "--beam", "1", "--workers", "0", "--device", "cpu",
        "--precision", "fp32"]
GOOD = {"a.png": (30, 50), "b.jpg": (40, 24), "sub/c.png": (20, 20)}  # file -> (h, w)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_describer(tmp_path_factory.mktemp("describe_ckpt") / "last.ckpt")


def _noise(h: int, w: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    for seed, (name, (h, w)) in enumerate(GOOD.items()):
        _noise(h, w, seed).save(root / name)
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return root


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _run(capfd, *args: object):
    return run_main(describe.main, [str(a) for a in args], capfd)


def test_describe_writes_good_images_skips_a_corrupt_one_resumes_and_draws(ckpt, folder, tmp_path, capfd):
    out, drawn = tmp_path / "regions.jsonl", tmp_path / "drawn"
    first = _run(capfd, folder, "--ckpt", ckpt, "--out", out, "--draw", drawn, *FAST)
    assert first.returncode == 3, first.stderr
    assert "failed: bad.png:" in first.stderr
    assert "described 3, failed 1, skipped 0 (already done) (6 regions)" in first.stdout
    records = _records(out)
    assert [r["file"] for r in records] == sorted(GOOD)
    for r in records:
        assert (r["height"], r["width"]) == GOOD[r["file"]]
        n = len(r["boxes"])
        assert n == 2 and len(r["labels"]) == len(r["scores"]) == len(r["captions"]) == len(r["category_ids"]) == n
        assert all(name in CLASS_NAMES for name in r["label_names"]) and all(isinstance(c, str) for c in r["captions"])
        assert all(0 <= x0 <= x1 <= r["width"] and 0 <= y0 <= y1 <= r["height"] for x0, y0, x1, y1 in r["boxes"])
        assert set(r) == {"file", "width", "height", "boxes", "labels", "label_names", "category_ids", "scores",
                          "captions"}
        assert Image.open(drawn / r["file"]).size == (r["width"], r["height"])
    assert not (drawn / "bad.png").exists()
    assert [e["file"] for e in _records(tmp_path / "regions.errors.jsonl")] == ["bad.png"]

    # Rerun: nothing redone; the corrupt file is retried (and fails again).
    second = _run(capfd, folder, "--ckpt", ckpt, "--out", out, *FAST)
    assert second.returncode == 3 and "described 0, failed 1, skipped 3" in second.stdout
    assert _records(out) == records

    # The bad file replaced by a good one, a new image added: only those two are described.
    _noise(16, 16, 7).save(folder / "bad.png")
    _noise(18, 26, 8).save(folder / "d.png")
    third = _run(capfd, folder, "--ckpt", ckpt, "--out", out, *FAST)
    assert third.returncode == 0, third.stderr
    assert "described 2, failed 0, skipped 3" in third.stdout
    assert [r["file"] for r in _records(out)] == [*sorted(GOOD), "bad.png", "d.png"]
    assert not (tmp_path / "regions.errors.jsonl").exists()


def test_describe_captions_the_boxes_of_a_results_file(ckpt, folder, tmp_path, capfd):
    """Entries by image_id (vitkit detect's numbering: a.png 1, b.jpg 2, bad.png 3, sub/c.png 4) and by file_name;
    each given box comes back as given with a caption; an unknown image is left out with a warning."""
    given = [{"image_id": 1, "bbox": [1, 2, 20, 10], "score": 0.9, "category_id": 3},
             {"image_id": 1, "bbox": [0, 0, 50, 30]},
             {"file_name": "c.png", "bbox": [4.5, 5, 10, 8.25]},
             {"image_id": 99, "bbox": [0, 0, 5, 5]}]
    boxes = tmp_path / "dets.json"
    boxes.write_text(json.dumps(given))
    out = tmp_path / "given.jsonl"
    result = _run(capfd, folder, "--ckpt", ckpt, "--out", out, "--boxes", boxes, *FAST)
    assert result.returncode == 3, result.stderr  # bad.png still fails
    assert "warning: 1 boxes of" in result.stderr and "not in" in result.stderr
    records = {r["file"]: r for r in _records(out)}
    assert records["a.png"]["boxes"] == [[1, 2, 21, 12], [0, 0, 50, 30]]
    assert records["sub/c.png"]["boxes"] == [[4.5, 5, 14.5, 13.25]]
    assert records["b.jpg"]["boxes"] == [] and records["b.jpg"]["captions"] == []
    for r in records.values():
        assert len(r["captions"]) == len(r["boxes"]) == len(r["scores"]) == len(r["labels"])

    # With --annotations, image ids are the annotation file's.
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": [{"id": 70, "file_name": "b.jpg"}], "categories": []}))
    boxes.write_text(json.dumps([{"image_id": 70, "bbox": [2, 3, 4, 5]}]))
    again = _run(capfd, folder, "--ckpt", ckpt, "--out", tmp_path / "gt.jsonl", "--boxes", boxes, "--annotations", gt,
                 *FAST)
    assert again.returncode == 3
    assert {r["file"]: r["boxes"] for r in _records(tmp_path / "gt.jsonl")}["b.jpg"] == [[2, 3, 6, 8]]


def test_usage_errors_name_the_problem(ckpt, folder, tmp_path, capfd):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": 1, "bbox": [0, 0, 1]}]))
    result = _run(capfd, folder, "--ckpt", ckpt, "--boxes", bad, "--out", tmp_path / "o.jsonl", *FAST)
    assert result.returncode == 2 and "entry [0] needs 'bbox'" in result.stderr
    detector = save_detector(tmp_path / "det.ckpt")
    result = _run(capfd, folder, "--ckpt", detector, "--out", tmp_path / "o.jsonl", *FAST)
    assert result.returncode == 2 and "not a describe one" in result.stderr
    result = _run(capfd, folder, "--ckpt", ckpt, "--annotations", bad, *FAST)
    assert result.returncode == 2 and "pass --boxes FILE too" in result.stderr
    assert "describe" in commands()


@pytest.mark.slow
def test_tools_describe_runs_as_a_script(ckpt, folder, tmp_path):
    (folder / "bad.png").unlink()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "describe.py"), str(folder), "--ckpt", str(ckpt),
                           "--out", str(tmp_path / "r.jsonl"), *FAST], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(_records(tmp_path / "r.jsonl")) == 3 and "described 3" in proc.stdout


def test_help_says_how_given_boxes_find_their_images():
    text = " ".join(describe.build_parser().format_help().split())
    assert "image_id: --annotations' ids, else FOLDER's files numbered 1, 2, ... in sorted order" in text
    assert "file_name: path relative to FOLDER" in text
