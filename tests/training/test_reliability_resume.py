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
from torch.utils.data import RandomSampler

from vitkit.data.bad_images import SkippingDataLoader
from vitkit.data.sampling import GroupedBatchSampler
from vitkit.training.resume import EpochRandomSampler, make_resumable

REPO = Path(__file__).resolve().parents[2]
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
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO),
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


# ------------------------------------------------------------------------------------------ DDP shuffle seed
def _ddp_epoch(monkeypatch, seed: int, pl_global_seed: int, skip: int, rank: int,
               groups: list[int] | None = None) -> list[list[int]]:
    """Rank ``rank``'s batches (dataset indices) of epoch 1 from batch ``skip`` on, for a run whose ExactResume seed is
    ``seed`` in a process whose ``PL_GLOBAL_SEED`` is ``pl_global_seed``, with the DistributedSampler Lightning puts
    in under DDP (2 ranks), built and swapped in by Lightning's own functions. ``groups``: the items' groups for a
    loader of aspect-ratio grouped batches (made resumable as the training CLI makes a datamodule's loader)."""
    from lightning.fabric.utilities.data import _replace_dunder_methods, _set_sampler_epoch
    from lightning.pytorch.trainer.connectors.data_connector import _get_distributed_sampler
    from lightning.pytorch.trainer.states import RunningStage
    from lightning.pytorch.utilities.data import _update_dataloader
    from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

    from vitkit.training.resume import ExactResume, ResumableDataLoader

    monkeypatch.setenv("PL_GLOBAL_SEED", str(pl_global_seed))
    resume = ExactResume(seed=seed)  # as restored from the checkpoint
    resume.position = lambda: (1, skip)  # epoch 1, ``skip`` of its batches already trained
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        if groups is None:
            loader = ResumableDataLoader(list(range(40)), batch_size=4, shuffle=True, resume=resume, collate_fn=list)
        else:
            data = list(range(40))
            plain = SkippingDataLoader(data, batch_sampler=GroupedBatchSampler(RandomSampler(data), 4, False, groups),
                                       collate_fn=list)
            loader = make_resumable(plain, resume)
            assert type(loader.batch_sampler.sampler) is EpochRandomSampler  # the run's seed draws the order
    sampler = _get_distributed_sampler(loader, shuffle=True, overfit_batches=0, mode=RunningStage.TRAINING,
                                       num_replicas=2, rank=rank)
    assert type(sampler) is DistributedSampler and sampler.seed == pl_global_seed  # what Lightning does
    loader = _update_dataloader(loader, sampler, mode=RunningStage.TRAINING)
    _set_sampler_epoch(loader, 1)  # as Lightning does at the epoch start
    return [list(batch) for batch in loader]


def test_ddp_resume_shuffles_with_the_runs_seed_not_pl_global_seed(monkeypatch):
    """Lightning seeds its DistributedSampler from PL_GLOBAL_SEED, which a resumed process need not share with the
    interrupted one (``seed_everything: true`` draws a new one): the resumed epoch must still go on with the
    uninterrupted run's permutation, on every rank."""
    seed = 1234
    straight = {rank: _ddp_epoch(monkeypatch, seed, seed, 0, rank) for rank in (0, 1)}
    assert sorted(i for rank in (0, 1) for batch in straight[rank] for i in batch) == list(range(40))  # one shuffle
    for rank in (0, 1):
        resumed = _ddp_epoch(monkeypatch, seed, 999, 2, rank)  # another PL_GLOBAL_SEED, 2 batches already done
        assert resumed == straight[rank][2:]
    assert _ddp_epoch(monkeypatch, seed + 1, seed, 0, 0) != straight[0]  # the run's seed decides the order


def test_grouped_batches_resume_exactly_and_shard_one_permutation_under_ddp(monkeypatch):
    """Aspect-ratio grouped batches (data.aspect_ratio_groups) keep what plain ones have: the ranks shard one
    permutation, as many batches each, and a resumed epoch goes on with the same batches."""
    groups = [(i * 7) % 3 for i in range(40)]
    straight = {rank: _ddp_epoch(monkeypatch, 1234, 1234, 0, rank, groups) for rank in (0, 1)}
    assert sorted(i for rank in (0, 1) for batch in straight[rank] for i in batch) == list(range(40))
    for rank in (0, 1):
        assert len(straight[rank]) == 5
        assert sum(len({groups[i] for i in batch}) > 1 for batch in straight[rank]) <= 2  # end-of-epoch leftovers
        assert _ddp_epoch(monkeypatch, 1234, 999, 2, rank, groups) == straight[rank][2:]
    assert _ddp_epoch(monkeypatch, 1235, 1234, 0, 0, groups) != straight[0]


class _Tiny(L.LightningModule):
    """A 1-weight model over the integers 0..39 (batch 4) that records each step's batch."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Linear(1, 1)
        self.seen: dict[int, list[int]] = {}

    def training_step(self, batch, batch_idx: int):
        self.seen[self.global_step] = [int(i) for i in batch]
        return (self.w(batch.float()[:, None] / 40) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(list(range(40)), batch_size=4, shuffle=True)


class _SaveAt(L.Callback):
    def __init__(self, step: int, path: str) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


def _ddp_resume_worker(rank: int, world: int, port: int, out: str) -> None:
    import warnings

    from lightning.pytorch.strategies import DDPStrategy

    from vitkit.training.resume import ExactResume

    # as torchrun would set them: Lightning joins the process group instead of launching processes itself
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world), NODE_RANK="0")
    torch.set_num_threads(1)
    ckpt = str(Path(out) / "mid.ckpt")

    def fit(pl_global_seed: int, max_steps: int = -1, callbacks=(), ckpt_path=None) -> _Tiny:
        os.environ["PL_GLOBAL_SEED"] = str(pl_global_seed)  # what seed_everything leaves for Lightning's sampler
        torch.manual_seed(0)
        model = _Tiny()
        trainer = L.Trainer(accelerator="cpu", devices=world, strategy=DDPStrategy(process_group_backend="gloo"),
                            max_epochs=2, max_steps=max_steps, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False,
                            callbacks=[ExactResume(), *callbacks])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(model, ckpt_path=ckpt_path)
        return model

    straight = fit(1234)
    fit(1234, max_steps=7, callbacks=[_SaveAt(7, ckpt)])  # "killed" after step 7: 2 batches into epoch 1
    resumed = fit(999, ckpt_path=ckpt)  # a new process: seed_everything: true drew another PL_GLOBAL_SEED
    torch.save({"straight": straight.seen, "resumed": resumed.seen, "weights": (straight.w.state_dict(),
                                                                              resumed.w.state_dict())},
               Path(out) / f"rank{rank}.pt")


def test_ddp_resume_mid_epoch_continues_the_same_batches(tmp_path):
    """2 gloo processes: a run resumed mid-epoch (with another PL_GLOBAL_SEED) trains each rank on the batches the
    uninterrupted run did, and ends with the same weights."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_resume_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for r in ranks:
        assert sorted(r["resumed"]) == [7, 8, 9]
        assert {step: r["straight"][step] for step in (7, 8, 9)} == r["resumed"]
        a, b = r["weights"]
        assert all(torch.equal(a[k], b[k]) for k in a)
    epoch1 = [i for r in ranks for step in range(5, 10) for i in r["straight"][step]]
    assert sorted(epoch1) == list(range(40))  # the ranks shard one permutation
