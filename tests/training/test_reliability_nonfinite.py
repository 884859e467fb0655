"""Reliability (issue 7, item 5): non-finite losses and degenerate boxes.

- Degenerate predicted boxes (zero or negative size, NaN, inf) never crash the matcher or the losses.
- A NaN loss stops training with a message naming the step and the batch's image ids (``model.nonfinite=raise``;
  detection and captioning), or skips the step (``skip``): no weight and no optimizer-state update, and training goes
  on.
- Under DDP (2 CPU processes, gloo) a NaN on one rank makes every rank skip the same step: no deadlock, and the ranks'
  weights stay identical.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from tests.support.tiny_checkpoints import detector_config
from vitkit.data.shapes import ensure_shapes
from vitkit.detection import DETR, HungarianMatcher, SetCriterion
from vitkit.detection.datamodule import CocoDataModule
from vitkit.detection.module import DetectionModule
from vitkit.eval.coco_results import validate_results
from vitkit.training.guards import NonFiniteLossError, check_finite_loss
from vitkit.utils.config import instantiate

pytestmark = pytest.mark.usefixtures("one_thread")



# ------------------------------------------------------------------------------------------ degenerate boxes
def _criterion(loss_type: str) -> SetCriterion:
    """The criterion of a loss kind: "ce" is a softmax head's, "varifocal" a sigmoid head's."""
    return SetCriterion(HungarianMatcher()).bind(3, sigmoid_head=loss_type != "ce")


def _degenerate_outputs(loss_type: str) -> tuple[dict, list[dict]]:
    gen = torch.Generator().manual_seed(0)
    width = 3 + (loss_type == "ce")
    boxes = torch.rand(2, 6, 4, generator=gen) * 0.5 + 0.25  # (B, Q, 4) cxcywh
    boxes[0, 0] = torch.tensor([0.5, 0.5, 0.0, 0.0])  # zero size
    boxes[0, 1] = torch.tensor([0.5, 0.5, -0.3, 0.2])  # negative width
    boxes[0, 2] = torch.tensor([1.7, -0.4, 0.1, 0.1])  # outside the image
    boxes[1, 0] = torch.tensor([0.5, 0.5, 0.0, -1.0])  # zero width, negative height
    outputs = {"pred_logits": torch.randn(2, 6, width, generator=gen, requires_grad=True),
               "pred_boxes": boxes.requires_grad_()}
    targets = [{"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.0, 0.1]]), "labels": torch.tensor([0, 2])},
               {"boxes": torch.tensor([[0.4, 0.6, 0.3, 0.1]]), "labels": torch.tensor([1])}]
    return outputs, targets


@pytest.mark.parametrize("loss_type", ["ce", "varifocal"])
def test_degenerate_predicted_boxes_give_finite_losses_and_gradients(loss_type: str) -> None:
    outputs, targets = _degenerate_outputs(loss_type)
    criterion = _criterion(loss_type)
    losses = criterion(outputs, targets)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    losses["loss"].backward()
    assert torch.isfinite(outputs["pred_boxes"].grad).all() and torch.isfinite(outputs["pred_logits"].grad).all()


@pytest.mark.parametrize("loss_type", ["ce", "varifocal"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_inf_boxes_do_not_crash_matcher_or_giou(loss_type: str, bad: float) -> None:
    outputs, targets = _degenerate_outputs(loss_type)
    with torch.no_grad():
        outputs["pred_boxes"][0, 3] = bad
        outputs["pred_boxes"][1, 1, 2:] = bad
        outputs["pred_logits"][1, 2] = bad
    criterion = _criterion(loss_type)
    for (src, tgt), t in zip(criterion.matcher(outputs, targets), targets, strict=True):
        assert len(src) == len(t["boxes"]) and sorted(tgt.tolist()) == list(range(len(t["boxes"])))
    losses = criterion(outputs, targets)  # may be NaN: the guard's business
    assert set(losses) >= {"loss", "loss_ce", "loss_bbox", "loss_giou"}


def test_validation_drops_nonfinite_detections_instead_of_crashing():
    """A diverged model's NaN boxes reach validation: they are dropped and counted, COCO results stay valid."""
    torch.manual_seed(0)
    module = DetectionModule(instantiate(detector_config(num_queries=6), DETR), SetCriterion(HungarianMatcher()),
                             num_classes=4,
                             label_to_cat_id=[1, 3, 7, 9]).eval()
    real_forward = module.detector.forward

    def diverged(images, mask=None, targets=None):
        out = real_forward(images, mask, targets)
        out["pred_boxes"] = out["pred_boxes"].clone()
        out["pred_boxes"][0, :3] = float("nan")  # 3 of image 0's 6 queries
        return out

    module.detector.forward = diverged
    images, mask = torch.rand(2, 3, 64, 64), torch.zeros(2, 64, 64, dtype=torch.bool)
    targets = [{"image_id": torch.tensor(i), "orig_size": torch.tensor([64, 64])} for i in (5, 6)]
    module.on_validation_epoch_start()
    with torch.no_grad():
        module.validation_step((images, mask, targets), 0)
    assert module._val_nonfinite == 3  # softmax head: one detection per query
    assert len(validate_results(module._val_results)) == 2 * 6 - 3  # what COCOeval gets is valid
    assert {r["image_id"] for r in module._val_results} == {5, 6}


# ----------------------------------------------------------------------------------------- non-finite losses
class _Poisoned(nn.Module):
    """The criterion, with its total loss made NaN while ``armed``."""

    def __init__(self, criterion: nn.Module) -> None:
        super().__init__()
        self.inner, self.armed = criterion, False

    def forward(self, outputs: dict, targets: list[dict]) -> dict:
        losses = self.inner(outputs, targets)
        if self.armed:
            losses["loss"] = losses["loss"] * float("nan")
        return losses


class NaNAtStep(DetectionModule):
    """DetectionModule whose loss is NaN at optimizer step ``nan_step`` (on rank ``nan_rank`` only, if given)."""

    def __init__(self, *args, nan_step: int = 1, nan_rank: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.nan_step, self.nan_rank = nan_step, nan_rank
        self.criterion = _Poisoned(self.criterion)
        self.batch_ids: dict[int, list[int]] = {}  # step -> image ids of the batch

    def training_step(self, batch, batch_idx: int):
        self.batch_ids[self.global_step] = [int(t["image_id"]) for t in batch[2]]
        self.criterion.armed = self.global_step == self.nan_step and self.nan_rank in (None, self.global_rank)
        return super().training_step(batch, batch_idx)


class Snapshots(L.Callback):
    """Weights and AdamW state before and after every training step."""

    def __init__(self) -> None:
        self.before: dict[int, dict] = {}
        self.after: dict[int, dict] = {}

    @staticmethod
    def _state(trainer, pl_module) -> dict:
        return {"weights": copy.deepcopy(pl_module.detector.state_dict()),
                "adam": copy.deepcopy(trainer.optimizers[0].state_dict()["state"])}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.before[trainer.global_step] = self._state(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.after[trainer.global_step - 1] = self._state(trainer, pl_module)


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes") / "data"
    ensure_shapes(root, num_train=8, num_val=2, image_size=80)
    return root


def _fit(shapes: Path, nonfinite: str, callbacks=(), **trainer_kwargs):
    torch.manual_seed(0)
    module = NaNAtStep(instantiate(detector_config(num_queries=6), DETR), SetCriterion(HungarianMatcher()),
                       num_classes=4, nonfinite=nonfinite, lr=1e-3,
                       schedule="cosine", nan_step=1)
    data = CocoDataModule(root=str(shapes), batch_size=2, num_workers=0, train_scales=[64], train_max_size=96,
                          crop_p=0.0, val_size=64, val_max_size=96, pad_to_multiple=16)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, callbacks=list(callbacks), **trainer_kwargs)
    trainer.fit(module, data)
    return module, trainer


def test_nonfinite_loss_stops_training_naming_step_and_image_ids(shapes):
    with pytest.raises(NonFiniteLossError) as err:
        _fit(shapes, "raise")
    message = str(err.value)
    assert "non-finite loss at step 1" in message and "model.nonfinite=skip" in message
    ids = [int(i) for i in message.split("image ids [")[1].split("]")[0].split(",")]
    assert len(ids) == 2  # the batch's two images, as COCO ids


def test_nonfinite_skip_leaves_weights_and_optimizer_untouched(shapes):
    snaps = Snapshots()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module, trainer = _fit(shapes, "skip", callbacks=[snaps])
    skipped = [str(w.message) for w in caught if "step skipped" in str(w.message)]
    assert len(skipped) == 1 and "step 1" in skipped[0] and str(module.batch_ids[1]) in skipped[0]
    assert _same(snaps.before[1], snaps.after[1])  # the skipped step changed no weight and no AdamW moment
    assert not _same(snaps.before[2]["weights"], snaps.after[2]["weights"])  # the next step trained as usual
    assert trainer.global_step == 3 and module._skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_nonfinite_caption_loss_names_the_image_ids(shapes):
    """Caption training batches carry their image ids (as detection's targets do), so a NaN loss names them."""
    from vitkit.captioning import Captioner
    from vitkit.captioning.datamodule import CaptionDataModule
    from vitkit.captioning.module import CaptionModule
    from vitkit.core import TransformerDecoder, ViTEncoder

    class NaNCaptions(CaptionModule):
        batch_ids: dict[int, list[int]]

        def training_step(self, batch, batch_idx: int):
            self.batch_ids[self.global_step] = [int(i) for i in batch[3]]
            loss = type(self.captioner).loss
            nan = float("nan") if self.global_step == 1 else 1.0
            self.captioner.loss = lambda logits, tokens: loss(self.captioner, logits, tokens) * nan
            try:
                return super().training_step(batch, batch_idx)
            finally:
                del self.captioner.loss

    torch.manual_seed(0)
    data = CaptionDataModule(root=str(shapes), batch_size=2, num_workers=0, train_size=64, val_size=64, max_size=96,
                             max_length=12)
    tok = data.tokenizer
    captioner = Captioner(ViTEncoder(patch_size=16, embed_dim=16, depth=1, num_heads=2, pos_embed="sine",
                                     class_token=False),
                          TransformerDecoder(dim=16, depth=1, num_heads=2, return_intermediate=False),
                          vocab_size=tok.vocab_size, max_length=12, pad_id=tok.pad_id, bos_id=tok.bos_id,
                          eos_id=tok.eos_id)
    module = NaNCaptions(captioner, java=False, warmup_steps=1)
    module.batch_ids = {}
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0)
    with pytest.raises(NonFiniteLossError) as err:
        trainer.fit(module, data)
    message = str(err.value)
    assert "non-finite loss at step 1" in message
    ids = [int(i) for i in message.split("image ids [")[1].split("]")[0].split(",")]
    assert ids == module.batch_ids[1] and set(ids) <= set(data._dataset("train").ids)  # the batch's COCO ids


# ---------------------------------------------------------------------------------------------------- DDP
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_skip_worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    # as torchrun would set them: Lightning joins the process group instead of launching processes itself
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world), NODE_RANK="0")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    module = NaNAtStep(instantiate(detector_config(num_queries=6), DETR), SetCriterion(HungarianMatcher()),
                       num_classes=4, nonfinite="skip", lr=1e-3,
                       schedule="cosine", nan_step=1, nan_rank=1)
    data = CocoDataModule(root=root, batch_size=2, num_workers=0, train_scales=[64], train_max_size=96, crop_p=0.0,
                          val_size=64, val_max_size=96, pad_to_multiple=16)
    snaps = Snapshots()
    from lightning.pytorch.strategies import DDPStrategy

    trainer = L.Trainer(accelerator="cpu", devices=world, strategy=DDPStrategy(process_group_backend="gloo"),
                        max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[snaps])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, data)
    # the guard itself, in the same process group: "raise" mode raises on every rank, naming rank 1's images
    loss = torch.tensor(float("nan") if rank == 1 else 1.0)
    try:
        check_finite_loss(loss, mode="raise", step=5, epoch=0, batch_idx=5, image_ids=lambda: [10 + rank])
        message = None
    except NonFiniteLossError as err:
        message = str(err)
    finite = check_finite_loss(torch.tensor(2.0), mode="raise", step=6, epoch=0, batch_idx=6, image_ids=None)
    torch.save({"weights": module.detector.state_dict(), "skip_unchanged": _same(snaps.before[1], snaps.after[1]),
                "steps": trainer.global_step, "skipped": module._skipped_steps, "ids": module.batch_ids[1],
                "message": message, "finite": finite}, Path(out) / f"rank{rank}.pt")


def test_ddp_ranks_agree_to_skip_or_stop_on_a_nonfinite_loss(shapes, tmp_path):
    """Rank 1 alone gets a NaN loss at step 1: both ranks skip it (Lightning does not hang in the gradient
    all-reduce), train on, and end with identical weights. In "raise" mode both ranks raise, naming rank 1's ids."""
    mp.spawn(_ddp_skip_worker, args=(2, _free_port(), str(shapes), str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert a["steps"] == b["steps"] == 3 and a["skipped"] == b["skipped"] == 1
    assert a["skip_unchanged"] and b["skip_unchanged"]
    assert _same(a["weights"], b["weights"])
    assert a["finite"] is b["finite"] is False
    for r in (a, b):
        assert "rank 1: loss nan, image ids [11]" in r["message"] and "rank 0" not in r["message"]
