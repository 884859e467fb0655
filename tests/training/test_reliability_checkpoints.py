"""Reliability (issue 7): atomic checkpoint writes (item 3) and untrusted checkpoints (item 4).

The malicious checkpoint is a real one: unpickling its payload calls ``open(marker, "w")``, creating a file (the
first test proves it does with ``weights_only=False``). Every entry point that reads a checkpoint must refuse it with
a clear message, and the marker file must never appear: ``vitkit.load``, ``tools/eval.py --ckpt`` and ``--weights``,
``tools/train.py --ckpt_path`` (Lightning's resume path), ``tools/caption.py --ckpt`` and ``tools/export.py``.

A checkpoint's stored model config is built by jsonargparse, which imports what its class paths name: one that names
a class outside vitkit, torch.nn and timm (``subprocess.Popen``, ``os.system`` reached through a vitkit module) is
refused before anything is built, and ``pretrained`` is turned off.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import vitkit
from tests.support.tiny_checkpoints import detector_config
from vitkit.data.shapes import ensure_shapes
from vitkit.io.export import read_checkpoint_config
from vitkit.training.checkpoint_io import SafeCheckpointIO
from vitkit.utils.checkpoints import CheckpointError, atomic_torch_save, check_stored_config, safe_load_checkpoint
from vitkit.utils.spec import SPEC_KEY, InferenceSpec, spec_metadata, write_spec

REPO = Path(__file__).resolve().parents[2]
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
    spec = {"version": 1, "task": "detection", "model_config": {"class_path": "vitkit.detection.DETR", "init_args": {}},
            "size": 32, "max_size": 64, "class_names": ["square"]}
    torch.save({"state_dict": {}, SPEC_KEY: spec, "hyper_parameters": {"class_names": ["square"]}, "epoch": 0,
                "global_step": 0,
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


@pytest.mark.parametrize("flag", ["--ckpt", "--weights"])
def test_eval_cli_refuses_pickled_code(evil, shapes, tmp_path, flag):
    """``--weights`` reads official DETR weights (a .pth) through the same refusal as ``--ckpt``."""
    path, marker = evil
    if flag == "--weights":
        path = path.rename(path.with_suffix(".pth"))
    proc = _run([str(REPO / "tools" / "eval.py"), str(CONFIG), flag, str(path), "--data.root", str(shapes),
                 *DATA], cwd=tmp_path)
    _assert_refused(proc, marker)


@pytest.mark.parametrize("fmt", ["safetensors", "onnx"])
def test_export_cli_refuses_pickled_code(evil, tmp_path, fmt):
    path, marker = evil
    proc = _run([str(REPO / "tools" / "export.py"), str(path), "--format", fmt], cwd=tmp_path)
    _assert_refused(proc, marker)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.ckpt"]  # nothing was written next to it


def test_export_reads_the_config_through_the_safe_loader(evil):
    path, marker = evil
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint_config(path)
    assert not marker.exists()


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


# ------------------------------------------------------------------------------------- stored model configs
def _with(config: dict, key: str, value) -> dict:
    """``config`` with ``value`` at the dotted ``key`` (init_args levels spelled out)."""
    config = copy.deepcopy(config)
    *parents, leaf = key.split(".")
    node = config
    for name in parents:
        node = node[name]
    node[leaf] = value
    return config


def _hostile_configs(marker: Path) -> dict[str, tuple[dict, str, str]]:
    """name -> (detector config, refused key, refused class)."""
    popen = {"class_path": "subprocess.Popen", "init_args": {"args": ["touch", str(marker)]}}
    base = detector_config()
    return {
        "top level": (popen, "class_path", "subprocess.Popen"),
        "nested class_path": (_with(base, "init_args.encoder", popen), "init_args.encoder.class_path",
                              "subprocess.Popen"),
        "re-exported through vitkit": (
            _with(base, "init_args.decoder", {"class_path": "vitkit.training.resume.os.system",
                                              "init_args": {"command": f"touch {marker}"}}),
            "init_args.decoder.class_path", "vitkit.training.resume.os.system"),
        "class given by name": (_with(base, "init_args.encoder.init_args.norm_layer", "os.system"),
                                "init_args.encoder.init_args.norm_layer", "os.system"),
        "class_path inside a string": (
            _with(base, "init_args.encoder", json.dumps(popen)), "init_args.encoder.class_path", "subprocess.Popen"),
    }


@pytest.mark.parametrize("case", ["top level", "nested class_path", "re-exported through vitkit", "class given by name",
                                  "class_path inside a string"])
def test_stored_config_naming_classes_outside_vitkit_is_refused(tmp_path, case):
    """``vitkit.load`` of a checkpoint (and of an exported safetensors file) whose stored config names a class outside
    vitkit / torch.nn / timm: a CheckpointError naming the key and the class, and nothing is built or run."""
    from safetensors.torch import save_file

    marker = tmp_path / "pwned"
    config, key, cls = _hostile_configs(marker)[case]
    ckpt = tmp_path / "hostile.ckpt"
    spec = InferenceSpec(task="detection", model_config=config, size=32, max_size=64)
    ckpt_dict = {"state_dict": {}, "hyper_parameters": {}}
    write_spec(ckpt_dict, spec)
    torch.save(ckpt_dict, ckpt)
    exported = tmp_path / "hostile.safetensors"
    save_file({"w": torch.zeros(1)}, str(exported), metadata=spec_metadata(spec))
    for path in (ckpt, exported):
        with pytest.raises(CheckpointError) as err:
            vitkit.load(path)
        assert "refused" in str(err.value) and f"'{key}'" in str(err.value) and repr(cls) in str(err.value)
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint_config(ckpt)  # what tools/export.py --format safetensors copies into the export
    assert not marker.exists()


def test_stored_config_is_built_offline():
    """``pretrained: true`` in a stored config would download weights the checkpoint already holds: forced off, and
    ``pretrained_file`` dropped; the allowed classes pass unchanged."""
    config = _with(detector_config(), "init_args.encoder.init_args.patch_embed",
                   {"class_path": "vitkit.layers.BackbonePatchEmbed",
                    "init_args": {"model_name": "resnet18", "pretrained": True, "pretrained_file": "/tmp/r18.pth",
                                  "norm_layer": "torch.nn.LayerNorm"}})
    checked = check_stored_config(config, "x.ckpt")
    patch = checked["init_args"]["encoder"]["init_args"]["patch_embed"]["init_args"]
    assert patch["pretrained"] is False and patch["pretrained_file"] is None
    assert patch["norm_layer"] == "torch.nn.LayerNorm" and patch["model_name"] == "resnet18"
    assert config["init_args"]["encoder"]["init_args"]["patch_embed"]["init_args"]["pretrained"] is True  # a copy
    assert check_stored_config(detector_config(), "x.ckpt") == detector_config()


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
    from vitkit.utils.checkpoints import atomic_torch_save

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
    from vitkit.cli.train import TaskCLI
    from vitkit.detection.datamodule import CocoDataModule
    from vitkit.detection.module import DetectionModule
    from vitkit.detection.task import TASK as DETECTION
    from vitkit.training.resume import ExactResume

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    for name in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):  # seed_everything sets them: undone after the test
        monkeypatch.setenv(name, "0")
    cli = TaskCLI(DETECTION, DetectionModule, CocoDataModule, run=False, save_config_callback=None,
                  args=["--config", str(CONFIG), "--data.root", str(shapes), "--trainer.logger", "false", *DATA])
    assert isinstance(cli.trainer.strategy.checkpoint_io, SafeCheckpointIO)
    assert any(isinstance(cb, ExactResume) for cb in cli.trainer.callbacks)
