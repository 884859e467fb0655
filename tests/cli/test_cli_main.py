"""The installed ``vitkit`` script as a user types it (``[project.scripts]``; ``pip install -e .`` writes it next to
the interpreter), run from a folder outside the repository: the command list, a shipped config found by name, an
unknown name, and ``vitkit detect`` writing what ``tools/detect.py`` writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.configs import SHIPPED
from tests.support.mixed_images import noise
from tests.support.tiny_checkpoints import save_detector

REPO = Path(__file__).resolve().parents[2]
VITKIT = Path(sys.executable).parent / "vitkit"

pytestmark = pytest.mark.skipif(not VITKIT.is_file(), reason="no vitkit script: run `pip install -e .` first")


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


@pytest.mark.parametrize("command", [[str(VITKIT)], [sys.executable, "-m", "vitkit"]], ids=["script", "python-m"])
def test_help_lists_the_commands_with_examples(command, tmp_path):
    proc = _run([*command, "--help"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in ("train", "eval", "detect", "caption", "export", "benchmark", "make-shapes", "plot-pr"):
        assert f"\n  {name} " in proc.stdout, name
    assert "examples:" in proc.stdout and "vitkit detect photos/ --ckpt" in proc.stdout
    assert ", ".join(SHIPPED) in proc.stdout


def test_train_finds_a_shipped_config_by_name(tmp_path):
    """From a folder with no configs/ in it: the name resolves to the shipped file, whose name names the run."""
    proc = _run([str(VITKIT), "train", "detr_shapes", "--print_config"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = yaml.safe_load(proc.stdout)
    shipped = yaml.safe_load((REPO / "vitkit" / "configs" / "detr_shapes.yaml").read_text())
    assert printed["task"] == "detection" and printed["data"]["root"] == shipped["data"]["root"]
    assert printed["model"]["detector"]["init_args"]["num_queries"] == shipped["model"]["detector"]["init_args"][
        "num_queries"]
    assert printed["checkpoint"]["dirpath"] == "runs/detr_shapes/checkpoints"
    assert not (tmp_path / "runs").exists()  # nothing was trained


def test_unknown_config_name_lists_the_shipped_ones(tmp_path):
    proc = _run([str(VITKIT), "train", "detr_shapez"], cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: config detr_shapez: no such file, and no shipped config has that name")
    assert ", ".join(SHIPPED) in proc.stderr and proc.stderr.count("\n") == 1


def test_detect_writes_what_tools_detect_writes(tmp_path):
    ckpt = save_detector(tmp_path / "det.ckpt")
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    noise(40, 56, 1).save(images / "a.png")
    noise(64, 48, 2).save(images / "sub" / "b.jpg", quality=95)
    (images / "broken.png").write_bytes(b"not an image")
    options = ["--ckpt", str(ckpt), "--score-threshold", "0", "--device", "cpu", "--precision", "fp32",
               "--workers", "0"]
    outputs = {}
    for name, command in (("vitkit", [str(VITKIT), "detect"]),
                          ("tool", [sys.executable, str(REPO / "tools" / "detect.py")])):
        out = tmp_path / name / "dets.json"
        proc = _run([*command, str(images), "--out", str(out), *options], cwd=tmp_path)
        assert proc.returncode == 3, proc.stderr[-3000:]  # the broken file: reported, the run goes on
        assert "Traceback" not in proc.stderr and "broken.png" in proc.stderr
        outputs[name] = (json.loads(out.read_text()), json.loads(out.with_name("dets.images.json").read_text()),
                         proc.stdout.strip().splitlines()[-1].split(" in ")[0])  # the summary without time
    vitkit_dets, tool_dets = outputs["vitkit"][0], outputs["tool"][0]
    assert len(vitkit_dets) == 10 and vitkit_dets == tool_dets  # 5 queries x 2 readable images, box for box
    assert outputs["vitkit"][1:] == outputs["tool"][1:]  # the same image list and summary line
    assert outputs["vitkit"][2] == "detected 2, failed 1 (10 boxes)"
