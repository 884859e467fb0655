"""The detection CLIs as a user types them: train, evaluate a checkpoint, load it, and DDP validation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vitkit
from tests.support.cli import run_main
from vitkit.cli import train
from vitkit.utils.spec import SPEC_KEY

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "detr_shapes.yaml"
TINY = ["--data.shapes_train", "16", "--data.shapes_val", "7", "--data.num_workers", "0",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.log_every_n_steps", "1"]


def _run(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One tiny training run (2 epochs on 16 generated images) shared by the tests below."""
    work = tmp_path_factory.mktemp("train")
    proc = _run([str(REPO / "tools" / "train.py"), str(CONFIG), "--data.root", str(work / "data"),
                 "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "1", *TINY], cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Average Precision" in proc.stdout  # COCO summary printed at validation
    return work


def test_train_writes_run_folder_and_checkpoints(trained):
    run = trained / "runs" / "detr_shapes"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "version_0" / "config.yaml").is_file()
    metrics = (run / "version_0" / "metrics.csv").read_text()
    assert "val/AP" in metrics and "train/loss" in metrics
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["class_names"] == ["square", "circle", "triangle", "star"]
    assert ckpt["hyper_parameters"]["label_to_cat_id"] == [1, 3, 7, 9]
    spec = ckpt[SPEC_KEY]
    assert spec["model_config"]["init_args"]["num_classes"] == 4
    assert spec["class_names"] == ["square", "circle", "triangle", "star"] and spec["label_to_cat_id"] == [1, 3, 7, 9]
    assert (spec["size"], spec["max_size"]) == (ckpt["datamodule_hyper_parameters"]["val_size"],
                                                ckpt["datamodule_hyper_parameters"]["val_max_size"])
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 8  # the latest epoch, whether or not AP improved


def test_eval_checkpoint_and_load_predict(trained):
    ckpt = trained / "runs" / "detr_shapes" / "checkpoints" / "last.ckpt"
    out = trained / "stats.json"
    proc = _run([str(REPO / "tools" / "eval.py"), str(CONFIG), "--ckpt", str(ckpt), "--data.root",
                 str(trained / "data"), "--data.num_workers", "0", "--json-out", str(out)], cwd=trained)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("Average Precision") == 6
    stats = json.loads(out.read_text())
    assert set(stats) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"}

    det = vitkit.load(ckpt)
    images = sorted((trained / "data" / "val2017").glob("*.jpg"))[:2]
    preds = det.predict([str(p) for p in images], score_threshold=0.0)
    assert len(preds) == 2
    from PIL import Image

    w, h = Image.open(images[0]).size
    p = preds[0]
    assert p["boxes"].shape[1] == 4 and len(p["label_names"]) == len(p["scores"]) > 0
    assert set(p["label_names"]) <= {"square", "circle", "triangle", "star"}
    assert set(p["category_ids"]) <= {1, 3, 7, 9}
    assert (p["boxes"][:, 0::2] <= w).all() and (p["boxes"][:, 1::2] <= h).all()  # original-image pixels
    assert not (p["boxes"] < 0).any()


@pytest.fixture
def train_in_process(tmp_path, capfd, monkeypatch):
    """``vitkit train`` in this process, from ``tmp_path`` (:func:`tests.support.cli.run_main`)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["vitkit"])
    return lambda *args: run_main(train.main, args, capfd)


def test_unknown_config_key_is_an_error(train_in_process):
    """One paragraph naming the key, a spelling suggestion and the fix; no usage wall, no traceback (issue 7)."""
    proc = train_in_process(str(CONFIG), "--model.lrr", "1")
    assert proc.returncode == 2 and "unknown config key 'model.lrr'" in proc.stderr
    assert "did you mean 'model.lr'" in proc.stderr and "Fix:" in proc.stderr
    assert "Traceback" not in proc.stderr and "usage:" not in proc.stderr and len(proc.stderr.splitlines()) <= 3


def test_missing_data_folder_explains_the_layout(tmp_path, train_in_process):
    proc = train_in_process(str(CONFIG), "--data.root", str(tmp_path / "nope"), "--data.generate_shapes", "false")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr  # issue 7: a paragraph, not a traceback
    assert "error: data.root: missing" in proc.stderr
    assert "instances_train2017.json" in proc.stderr and "cocodataset.org" in proc.stderr


def test_a_users_folder_without_annotations_is_left_untouched(tmp_path, train_in_process):
    """Issue 30: COCO-named photos, no annotation files yet, the shipped shapes recipe (generate_shapes: true).
    The run stops with an error naming the missing file; every file stays byte-identical and nothing is added."""
    root = tmp_path / "mine"
    photos = {Path("train2017/000000000009.jpg"): b"\xff\xd8 a user's photo",
              Path("val2017/000000000139.jpg"): b"\xff\xd8 another"}
    for rel, data in photos.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    before = sorted(p for p in root.rglob("*"))
    proc = train_in_process(str(CONFIG), "--data.root", str(root))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "instances_train2017.json" in proc.stderr and "touched nothing" in proc.stderr
    assert sorted(p for p in root.rglob("*")) == before
    assert all((root / rel).read_bytes() == data for rel, data in photos.items())


def test_ddp_validation_matches_single_process(trained):
    """2 CPU processes (gloo) on 7 val images (not divisible by 2) give the single-process COCO stats."""
    ckpt = trained / "runs" / "detr_shapes" / "checkpoints" / "last.ckpt"
    stats, results = {}, {}
    for devices in ("1", "2"):
        out, res = trained / f"stats_{devices}.json", trained / f"results_{devices}.json"
        proc = _run([str(REPO / "tools" / "eval.py"), str(CONFIG), "--ckpt", str(ckpt),
                     "--data.root", str(trained / "data"), "--data.num_workers", "0", "--data.batch_size", "2",
                     "--trainer.precision", "32", "--trainer.devices", devices,
                     "--trainer.strategy", "ddp" if devices == "2" else "auto",
                     "--json-out", str(out), "--results-out", str(res)], cwd=trained)
        assert proc.returncode == 0, proc.stderr[-3000:]
        stats[devices] = json.loads(out.read_text())
        results[devices] = json.loads(res.read_text())
    assert stats["1"] == stats["2"]
    one, two = results["1"], results["2"]
    assert len({r["image_id"] for r in one}) == 7  # every val image once: none dropped...
    assert len(one) == len(two) == 7 * 100  # ...and none duplicated by the sampler's padding
    for image_id in {r["image_id"] for r in one}:
        left = [r for r in two if r["image_id"] == image_id]
        for a in (r for r in one if r["image_id"] == image_id):  # each detection has a twin (greedy match)
            twin = next(b for b in left if b["category_id"] == a["category_id"] and abs(a["score"] - b["score"]) < 1e-3
                        and max(abs(x - y) for x, y in zip(a["bbox"], b["bbox"], strict=True)) < 0.05)
            left.remove(twin)


def test_no_checkpointing_trains_without_the_checkpoint_callback(tmp_path):
    """--trainer.enable_checkpointing false drops the CLI's ModelCheckpoint (Lightning refuses the pair otherwise)."""
    proc = _run([str(REPO / "tools" / "train.py"), str(CONFIG), "--data.root", str(tmp_path / "data"),
                 "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0", "--trainer.enable_checkpointing",
                 "false", *TINY], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (tmp_path / "runs" / "detr_shapes" / "checkpoints").exists()
