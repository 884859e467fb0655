"""Reliability (issue 7, item 3): a training run killed mid-epoch and resumed with ``--ckpt_path last`` ends with
the same weights, bit for bit, as the run that was never interrupted (CPU, fixed seed).

The interrupted run is SIGKILLed (no chance to save anything) by :class:`KillAtStep`, a callback this module
provides to the subprocesses; ``last.ckpt`` comes from ``checkpoint.last_every_n_train_steps``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "detr_shapes.yaml"
DET = "--model.detector.init_args."
# 4 steps per epoch (16 images, batch 4), 2 epochs; a 1-block encoder; validation every epoch (so sanity checks and
# validations sit between the steps, in the interrupted and the resumed processes alike)
RUN = ["--data.shapes_train", "16", "--data.shapes_val", "4", "--data.num_workers", "0",
       "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
       "--trainer.log_every_n_steps", "1", "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "1",
       "--checkpoint.last_every_n_train_steps", "3", DET + "num_queries", "20", DET + "num_denoising", "10",
       DET + "encoder.init_args.depth", "1", DET + "decoder.init_args.depth", "2", "--model.num_select", "20",
       "--model.warmup_steps", "3", "--data.shapes_size", "96", "--data.train_scales", "[64, 80, 96]",
       "--data.train_max_size", "128", "--data.val_size", "96", "--data.val_max_size", "128",
       "--data.crop_resize", "[64, 96]", "--data.crop_size", "[48, 96]"]


class KillAtStep(L.Callback):
    """SIGKILL the process after optimizer step ``step`` (before that step's checkpoint callbacks run)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def _train(work: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent),
                                                                                 os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), str(CONFIG), "--data.root",
                           str(work.parent / "data"), *RUN, *extra], cwd=work, env=env, capture_output=True,
                          text=True, timeout=300)


def _kill_at(step: int) -> str:
    return "--trainer.callbacks+=" + json.dumps({"class_path": f"{__name__}.KillAtStep", "init_args": {"step": step}})


def _last(work: Path) -> dict:
    return torch.load(work / "runs" / "detr_shapes" / "checkpoints" / "last.ckpt", weights_only=True)


def test_resume_after_kill_mid_epoch_is_bit_exact(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    straight.mkdir()
    killed.mkdir()
    proc = _train(straight)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # killed after step 7: last.ckpt is mid-epoch 1 (step 6, 2 of its 4 batches done)
    proc = _train(killed, _kill_at(7))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    mid = _last(killed)
    assert mid["global_step"] == 6 and mid["epoch"] == 1
    assert mid["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"] == 2
    # resumed from mid-epoch to the end
    proc = _train(killed, "--ckpt_path", "last")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Restored all states" in proc.stderr + proc.stdout
    assert "not resumable" not in proc.stderr  # Lightning's warning for loaders that restart the epoch

    a, b = _last(straight), _last(killed)
    assert a["global_step"] == b["global_step"] == 8
    assert a["state_dict"].keys() == b["state_dict"].keys()
    differing = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values(),
                      strict=True):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)  # AdamW moments too
    assert a["lr_schedulers"] == b["lr_schedulers"]
    # no stray temporary files from the atomic writes
    assert not [p.name for p in (killed / "runs" / "detr_shapes" / "checkpoints").iterdir() if p.suffix == ".tmp"]
