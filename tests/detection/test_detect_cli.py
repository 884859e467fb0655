"""Detecting a folder: detect_folder and tools/detect.py as a user types it, on a folder of mixed real-world files.

The output must be a COCO results file that tools/eval.py accepts against the folder's annotation file; every bad
file is reported, the run never stops on one, and the exit status is 3.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vitkit
from tests.support.mixed_images import BAD, GOOD, make_mixed_folder
from tests.support.tiny_checkpoints import CAT_IDS, CLASS_NAMES, save_detector
from vitkit.data.folder import match_files
from vitkit.data.images import load_rgb
from vitkit.detection.folder import detect_folder
from vitkit.viz.draw import draw_path

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]
DETECT = REPO / "tools" / "detect.py"
EVAL = REPO / "tools" / "eval.py"
NUM_QUERIES = 5  # the tiny detector's: with threshold 0, every image gets 5 boxes (softmax head)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_detector(tmp_path_factory.mktemp("ckpt") / "det.ckpt")


@pytest.fixture(scope="module")
def det(ckpt):
    return vitkit.load(ckpt)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_mixed_folder(tmp_path_factory.mktemp("images"))


def _run(script: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


def _ground_truth(folder: Path, path: Path, leave_out: str) -> Path:
    """A COCO instances file for the folder's images but ``leave_out`` (the bad files too, as a split whose files
    got damaged), ids from 101 in reverse order (so they are not the listing numbers), one box per image; sizes of
    the upright decoded images."""
    images, anns = [], []
    for n, name in enumerate(sorted(GOOD + BAD, reverse=True)):
        if name == leave_out:
            continue
        w, h = load_rgb(folder / name).size if name in GOOD else (64, 64)
        image_id = 101 + n
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": CAT_IDS[n % 4],
                     "bbox": [0.0, 0.0, w / 2, h / 2], "area": w * h / 4, "iscrowd": 0})
    categories = [{"id": c, "name": name} for c, name in zip(CAT_IDS, CLASS_NAMES, strict=True)]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return path


# ----------------------------------------------------------------------------------------------- detect_folder
def test_detect_folder_numbers_files_and_matches_predict(det, folder, tmp_path):
    out = tmp_path / "dets.json"
    summary = detect_folder(det, folder, out, score_threshold=0.0, batch_size=5)
    assert (summary.done, summary.failed, summary.items) == (len(GOOD), len(BAD), NUM_QUERIES * len(GOOD))
    assert [f for f, _ in summary.failures] == BAD and all(reason for _, reason in summary.failures)
    listing = sorted(GOOD + BAD)
    sidecar = json.loads(summary.failures_file.read_text())["images"]
    assert summary.failures_file == tmp_path / "dets.images.json"
    assert [(e["id"], e["file_name"]) for e in sidecar] == [(i + 1, f) for i, f in enumerate(listing)]
    by_file = {e["file_name"]: e for e in sidecar}
    assert all("error" in by_file[f] and "width" not in by_file[f] for f in BAD)
    assert (by_file["rotated.jpg"]["width"], by_file["rotated.jpg"]["height"]) == (24, 48)  # EXIF applied
    assert (by_file["large.jpg"]["width"], by_file["large.jpg"]["height"]) == (1200, 800)

    results = json.loads(out.read_text())
    assert {r["image_id"] for r in results} == {by_file[f]["id"] for f in GOOD}
    assert {r["category_id"] for r in results} <= set(CAT_IDS)
    # the same detections as Detector.predict on each file (batched with padding here, alone there)
    for name in ("large.jpg", "rotated.jpg", "anim.gif", "gray16.png", "tiny.png"):
        expected = det.predict(load_rgb(folder / name), score_threshold=0.0)[0]
        got = [r for r in results if r["image_id"] == by_file[name]["id"]]
        assert [r["score"] for r in got] == pytest.approx(expected["scores"].tolist(), abs=1e-4)
        assert [r["category_id"] for r in got] == expected["category_ids"]
        xyxy = [[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in got)]
        assert torch.tensor(xyxy) == pytest.approx(expected["boxes"], abs=2e-2)
        width, height = by_file[name]["width"], by_file[name]["height"]
        assert all(0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height for x0, y0, x1, y1 in xyxy)

    high = detect_folder(det, folder / "sub", tmp_path / "high.json", score_threshold=1.0)
    assert (high.done, high.items) == (2, 0) and json.loads((tmp_path / "high.json").read_text()) == []


def test_annotation_ids_and_names():
    assert match_files(["a.jpg", "sub/b.jpg", "x/c.jpg", "y/c.jpg"], {"a.jpg": 1, "b.jpg": 2, "c.jpg": 3}) == {
        "a.jpg": "a.jpg", "sub/b.jpg": "b.jpg"}  # c.jpg is ambiguous: two listed files have that name
    assert [draw_path(f) for f in ("a.JPG", "b.png", "c.jpeg", "anim.gif", "d.tif")] == [
        "a.JPG", "b.png", "c.jpeg", "anim.gif.png", "d.tif.png"]


# ----------------------------------------------------------------------------------------------- tools/detect.py
def test_cli_mixed_folder_results_accepted_by_eval(ckpt, tmp_path):
    images = make_mixed_folder(tmp_path / "images")
    gt = _ground_truth(images, tmp_path / "instances_val.json", leave_out="tiny.png")
    out, drawn = tmp_path / "out" / "dets.json", tmp_path / "drawn"
    proc = _run(DETECT, str(images), "--ckpt", str(ckpt), "--out", str(out), "--annotations", str(gt), "--draw",
                str(drawn), "--score-threshold", "0", "--batch-size", "4", "--workers", "1", cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    failed = dict(line.split(": ", 3)[2:] for line in proc.stderr.splitlines() if line.startswith("detect.py: failed"))
    assert sorted(failed) == sorted([*BAD, "tiny.png"])
    assert failed["tiny.png"].startswith("not in the annotation file")
    assert all(failed[f] and "annotation" not in failed[f] for f in BAD)  # the read errors
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith(f"detected {len(GOOD) - 1}, failed {len(BAD) + 1} ({NUM_QUERIES * (len(GOOD) - 1)} boxes)")

    results = json.loads(out.read_text())
    gt_ids = {im["file_name"]: im["id"] for im in json.loads(gt.read_text())["images"]}
    assert {r["image_id"] for r in results} == {gt_ids[f] for f in GOOD if f != "tiny.png"}  # the file's ids
    assert all(set(r) == {"image_id", "category_id", "bbox", "score"} and len(r["bbox"]) == 4 for r in results)
    for name in GOOD:  # one drawn picture per detected input, same relative path
        picture = drawn / draw_path(name)
        assert picture.is_file() == (name != "tiny.png"), name
        if name != "tiny.png":
            with Image.open(picture) as im:
                assert im.size == load_rgb(images / name).size and im.format == ("PNG" if picture.suffix.lower()
                                                                                  == ".png" else "JPEG")
    with Image.open(drawn / "large.jpg") as im:  # 5 labelled boxes drawn: many pixels changed
        changed = (np.asarray(im, dtype=np.int16) - np.asarray(load_rgb(images / "large.jpg"))).__abs__() > 60
        assert changed.any(axis=-1).mean() > 0.005
    proc = _run(EVAL, "--annotations", str(gt), "--results", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("Average Precision") == 6 and proc.stdout.count("Average Recall") == 6


def _detect_main():
    """tools/detect.py's main(), imported in-process (no interpreter start-up)."""
    spec = importlib.util.spec_from_file_location("detect_tool", DETECT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_cli_attention_and_usage_errors(ckpt, folder, tmp_path, capsys):
    main = _detect_main()
    out, att = tmp_path / "d.json", tmp_path / "att"
    assert main([str(folder / "sub"), "--ckpt", str(ckpt), "--out", str(out), "--attention", str(att),
                 "--score-threshold", "0", "--workers", "0", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("detected 2, failed 0 (10 boxes)")
    assert sorted(p.relative_to(att).as_posix() for p in att.rglob("*") if p.is_file()) == ["B.PNG", "deep/c.Jpeg.png"]
    assert json.loads((tmp_path / "d.images.json").read_text())["images"][0] == {
        "id": 1, "file_name": "B.PNG", "width": 22, "height": 18}

    cases = [
        ((str(tmp_path / "nope"), "--ckpt", str(ckpt)), "image folder not found"),
        ((str(folder / "A.JPG"), "--ckpt", str(ckpt)), "not a folder"),
        ((str(folder), "--ckpt", str(tmp_path / "missing.ckpt")), "checkpoint not found"),
        ((str(folder), "--ckpt", str(ckpt), "--annotations", str(tmp_path / "gt.json")), "annotation file not found"),
        ((str(folder), "--ckpt", str(ckpt), "--draw", str(folder)), "would overwrite the images"),
        ((str(folder), "--ckpt", str(ckpt), "--attention", str(folder / "sub" / "..")), "would overwrite the images"),
    ]
    for args, message in cases:
        assert main(list(args)) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as exit_info:  # argparse: a usage error
        main([str(folder), "--ckpt", str(ckpt), "--score-threshold", "1.5"])
    assert exit_info.value.code == 2
    not_gt = tmp_path / "not_gt.json"
    not_gt.write_text('{"annotations": []}')
    assert main([str(folder), "--ckpt", str(ckpt), "--annotations", str(not_gt), "--workers", "0"]) == 2
    assert "not a COCO annotation file" in capsys.readouterr().err
