"""Reliability (issue 7): atomic checkpoint writes (item 3) and untrusted checkpoints (item 4).

The malicious checkpoint is a real one: unpickling its payload calls ``open(marker, "w")``, creating a file (the
first test proves it does with ``weights_only=False``). Every entry point that reads a checkpoint must refuse it with
a clear message, and the marker file must never appear: ``vitkit.load``, ``tools/eval.py --ckpt``,
``tools/train.py --ckpt_path`` (Lightning's resume path) and ``tools/caption.py --ckpt``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import vitkit
from vitkit.checkpoint import CheckpointError, atomic_torch_save, safe_load_checkpoint
from vitkit.data.shapes import ensure_shapes
from vitkit.train.checkpoint_io import SafeCheckpointIO

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "detr_shapes.yaml"
DATA = ["--data.shapes_train", "4", "--data.shapes_val", "2", "--data.shapes_size", "80", "--data.num_workers", "0",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


class Payload:
    """Unpickling this calls ``open(marker, "w")``: it creates ``marker`` (any callable would run the same way)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _evil_checkpoint(path: Path, marker: Path) -> Path:
    """A checkpoint that looks like tools/train.py's (detection) but carries the payload."""
    torch.save({"state_dict": {}, "vitkit_detector_config": {"class_path": "vitkit.models.DETR", "init_args": {}},
                "hyper_parameters": {"class_names": ["square"]}, "epoch": 0, "global_step": 0,
                "pytorch-lightning_version": "2.6.0", "payload": Payload(marker)}, path)
    return path


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes") / "data"
    ensure_shapes(root, num_train=4, num_val=2, image_size=80)
    return root


@pytest.fixture
def evil(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    return _evil_checkpoint(tmp_path / "evil.ckpt", marker), marker


def test_payload_really_runs_code_when_fully_unpickled(evil):
    path, marker = evil
    torch.load(path, weights_only=False)  # what vitkit never does
    assert marker.exists()


def test_vitkit_load_refuses_pickled_code(evil):
    path, marker = evil
    with pytest.raises(CheckpointError, match=r"refused.*open.*weights_only=True"):
        vitkit.load(path)
    with pytest.raises(CheckpointError, match="refused"):
        SafeCheckpointIO().load_checkpoint(path)  # the I/O Lightning resumes and validates through
    assert not marker.exists()


def _assert_refused(proc: subprocess.CompletedProcess, marker: Path) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "refused" in proc.stderr and "weights_only=True" in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not marker.exists()


def test_eval_cli_refuses_pickled_code(evil, shapes, tmp_path):
    path, marker = evil
    proc = _run([str(REPO / "tools" / "eval.py"), str(CONFIG), "--ckpt", str(path), "--data.root", str(shapes),
                 *DATA], cwd=tmp_path)
    _assert_refused(proc, marker)


def test_train_resume_refuses_pickled_code(evil, shapes, tmp_path):
    path, marker = evil
    proc = _run([str(REPO / "tools" / "train.py"), str(CONFIG), "--ckpt_path", str(path), "--data.root", str(shapes),
                 "--trainer.max_epochs", "1", *DATA], cwd=tmp_path)
    _assert_refused(proc, marker)


def test_caption_cli_refuses_pickled_code(evil, shapes, tmp_path):
    path, marker = evil
    proc = _run([str(REPO / "tools" / "caption.py"), str(shapes / "val2017"), "--ckpt", str(path), "--out",
                 str(tmp_path / "captions.jsonl")], cwd=tmp_path)
    _assert_refused(proc, marker)


def test_truncated_checkpoint_is_named_not_a_traceback(tmp_path):
    path = tmp_path / "cut.ckpt"
    atomic_torch_save({"w": torch.randn(1000)}, path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="truncated"):
        safe_load_checkpoint(path)


# ------------------------------------------------------------------------------------------------ atomic saves
class _FailsMidway:
    """Pickling this raises: the save fails after part of the checkpoint was serialised."""

    def __reduce__(self):
        raise OSError("disk full (simulated)")


def test_failed_save_keeps_previous_checkpoint(tmp_path):
    io, last = SafeCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    before = {"state_dict": {"w": torch.arange(10.0)}, "global_step": 3}
    io.save_checkpoint(before, last)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(10)}, "global_step": 6, "x": _FailsMidway()}, last)
    loaded = io.load_checkpoint(last)
    assert loaded["global_step"] == 3 and torch.equal(loaded["state_dict"]["w"], before["state_dict"]["w"])
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # the temporary file is gone


KILL_DURING_SAVE = textwrap.dedent("""
    import io, os, signal, sys
    import torch
    from vitkit.checkpoint import atomic_torch_save

    real_save = torch.save

    def half_then_killed(obj, f):  # write half of the real bytes, then die as a preempted job does
        buf = io.BytesIO()
        real_save(obj, buf)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = half_then_killed
    atomic_torch_save({"state_dict": {"w": torch.zeros(1 << 16)}, "global_step": 6}, sys.argv[1])  # what
    # SafeCheckpointIO.save_checkpoint does for a local path; this script only imports torch, not Lightning
""")


def test_kill_during_save_keeps_previous_checkpoint(tmp_path):
    last = tmp_path / "last.ckpt"
    SafeCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(1 << 16)}, "global_step": 3}, last)
    proc = _run(["-c", KILL_DURING_SAVE, str(last)], cwd=tmp_path)
    assert proc.returncode == -9, proc.stderr[-2000:]
    partial = [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]
    assert len(partial) == 1 and partial[0].stat().st_size > 0  # the half-written file is beside it...
    loaded = safe_load_checkpoint(last)  # ...and last.ckpt is the previous checkpoint, whole
    assert loaded["global_step"] == 3 and torch.equal(loaded["state_dict"]["w"], torch.ones(1 << 16))
    with pytest.raises(CheckpointError):
        safe_load_checkpoint(partial[0])


def test_cli_trainer_saves_and_loads_through_safe_io(shapes, tmp_path, monkeypatch):
    from vitkit.train.cli import VitkitCLI
    from vitkit.train.datamodules import CocoDataModule
    from vitkit.train.detection_module import DetectionModule
    from vitkit.train.resume import ExactResume

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    for name in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):  # seed_everything sets them: undone after the test
        monkeypatch.setenv(name, "0")
    cli = VitkitCLI(DetectionModule, CocoDataModule, run=False, save_config_callback=None,
                    args=["--config", str(CONFIG), "--data.root", str(shapes), "--trainer.logger", "false", *DATA])
    assert isinstance(cli.trainer.strategy.checkpoint_io, SafeCheckpointIO)
    assert any(isinstance(cb, ExactResume) for cb in cli.trainer.callbacks)
