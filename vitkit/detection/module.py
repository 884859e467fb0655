"""DetectionModule: Lightning training/validation of an injected :class:`vitkit.detection.DETR`.

The module owns the optimisation recipe (AdamW with a backbone lr multiplier and weight-decay groups,
warmup + cosine or step schedule) and the set-prediction criterion; data formats stay in the datamodule
and COCO scoring in :mod:`vitkit.eval.coco_eval`. Gradient clipping and EMA are Trainer features
(``trainer.gradient_clip_val``, ``lightning.pytorch.callbacks.EMAWeightAveraging``).
"""

from __future__ import annotations

import warnings
from typing import Literal

import lightning as L
import torch
from torch import Tensor, nn

from vitkit.detection import HungarianMatcher, PostProcess, SetCriterion
from vitkit.detection.model import DETR
from vitkit.eval.coco_eval import evaluate_coco, gather_image_ids, gather_results
from vitkit.train.guards import ConfigError, check_finite_loss, check_nonfinite_mode, zero_loss_like
from vitkit.train.optim import (
    adamw,
    adamw_param_groups,
    clip_fused_gradients,
    remap_optimizer_state,
    remap_scheduler_state,
    uses_grad_scaler,
    warmup_schedule,
)


class DetectionModule(L.LightningModule):
    """Train and validate a DETR-style detector.

    Args:
        detector: the model (its class head must have ``num_classes`` outputs, plus one for softmax heads).
        num_classes: number of classes, linked from the datamodule (checked against the detector).
        loss_type: "ce" (softmax + no-object, vanilla DETR), "focal" or "varifocal" (sigmoid heads).
        cost_class, cost_bbox, cost_giou: Hungarian matching costs.
        loss_ce, loss_bbox, loss_giou: loss weights.
        eos_coef: weight of the no-object class (CE only).
        one2many_k: how many times each target is repeated for the one-to-many queries.
        enc_one2many_k: how many times each target is repeated when matching two-stage encoder proposals.
        lr: base learning rate (transformer and heads).
        backbone_lr_mult: lr multiplier for the patch source (the CNN backbone or conv patchify).
        weight_decay: AdamW weight decay; norms, biases, embeddings and tokens get none.
        warmup_steps: linear warmup steps.
        schedule: "cosine" (to ``min_lr_ratio``) or "step" (x0.1 at ``lr_drop`` of the schedule, DETR's recipe).
        lr_drop: fraction of the total steps at which the step schedule drops.
        min_lr_ratio: final lr / base lr for the cosine schedule.
        num_select: detections kept per image by the post-processor.
        eval_backend: COCOeval implementation for validation: "faster" (faster-coco-eval) or "pycocotools".
        focal_alpha: alpha of the focal / varifocal loss and matching cost (RT-DETR uses 0.75 with varifocal).
        class_names: category names, filled from the datamodule and kept in checkpoints.
        label_to_cat_id: contiguous label -> dataset category id, filled from the datamodule.
        nonfinite: what a NaN/inf training loss does: "raise" stops training with a message naming the step and the
            batch's image ids; "skip" drops the step (no weight or optimizer-state update; the step counter and the
            lr schedule advance), with a warning naming the same. Under DDP all ranks skip together.
    """
    def __init__(
        self,
        detector: DETR,
        num_classes: int | None = None,
        loss_type: str = "ce",
        cost_class: float = 1.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        loss_ce: float = 1.0,
        loss_bbox: float = 5.0,
        loss_giou: float = 2.0,
        eos_coef: float = 0.1,
        one2many_k: int = 6,
        enc_one2many_k: int = 1,
        lr: float = 1e-4,
        backbone_lr_mult: float = 0.1,
        weight_decay: float = 1e-4,
        warmup_steps: int = 0,
        schedule: str = "step",
        lr_drop: float = 2 / 3,
        min_lr_ratio: float = 0.01,
        num_select: int = 100,
        eval_backend: str = "faster",
        focal_alpha: float = 0.25,
        class_names: list[str] | None = None,
        label_to_cat_id: list[int] | None = None,
        nonfinite: Literal["raise", "skip"] = "raise",
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["detector"])
        if num_classes is not None and num_classes != detector.num_classes:
            raise ValueError(
                f"model.num_classes: the data has {num_classes} classes but the detector was built for "
                f"{detector.num_classes}; drop the detector's num_classes from the config (it is linked from data)"
            )
        if (loss_type != "ce") != detector.sigmoid_head:
            raise ValueError(
                f"model.loss_type={loss_type!r} needs detector.sigmoid_head={loss_type != 'ce'} "
                f"(softmax heads train with 'ce', sigmoid heads with 'focal' or 'varifocal')"
            )
        check_nonfinite_mode(nonfinite)
        if schedule not in ("cosine", "step"):
            raise ValueError(f"model.schedule must be 'cosine' or 'step', got {schedule!r}")
        self.detector = detector
        use_focal = loss_type != "ce"
        matcher = HungarianMatcher(cost_class=cost_class, cost_bbox=cost_bbox, cost_giou=cost_giou,
                                   use_focal=use_focal, focal_alpha=focal_alpha)
        weights = {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}
        self.criterion = SetCriterion(detector.num_classes, matcher, weight_dict=weights, eos_coef=eos_coef,
                                      loss_type=loss_type, one2many_k=one2many_k,
                                      enc_one2many_k=enc_one2many_k,
                                      focal_alpha=focal_alpha)
        self.postprocess = PostProcess(use_focal=use_focal, num_select=num_select)
        self._val_results: list[dict] = []
        self._val_image_ids: list[int] = []
        self._val_nonfinite = 0  # detections dropped for non-finite boxes/scores in this validation
        self.last_eval = None  # CocoEvalResult of the latest validation epoch
        self.last_results: list[dict] = []  # its gathered COCO results
        self._skip_update = False  # set by a skipped (non-finite) step, cleared before the optimizer step
        self._skipped_steps = 0

    detector_config: dict | None = None  # set by the CLI: resolved class_path/init_args of the detector

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.detector_config is not None:
            checkpoint["vitkit_detector_config"] = self.detector_config

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._check_checkpoint_classes(checkpoint)
        self._drop_stale_level_embed(checkpoint)
        self.detector_config = checkpoint.get("vitkit_detector_config", self.detector_config)

    def _drop_stale_level_embed(self, checkpoint: dict) -> None:
        """Load a checkpoint saved when deformable detectors still created ``level_embed`` (zeros, never read, the
        reason DDP needed ``find_unused_parameters``): drop its weight and, for a resume, its AdamW slot. It was the
        detector's first parameter, which also decided the order of the AdamW groups."""
        weights = checkpoint.get("state_dict") or {}
        has_own = getattr(self.detector, "level_embed", None) is not None
        if has_own or weights.pop("detector.level_embed", None) is None:
            return
        old = nn.Module()  # the layout the optimizer state was saved with: level_embed first, then the rest
        old.level_embed = nn.Parameter(torch.zeros(1, 1))  # 2-D like the real one, so in the same group
        for name, child in self.detector.named_children():
            old.add_module(name, child)
        old_groups = [g["params"] for g in self._param_groups(old)]
        new_groups = [g["params"] for g in self._param_groups(self.detector)]
        for opt in checkpoint.get("optimizer_states") or []:
            order = remap_optimizer_state(opt, old_groups, new_groups)
            for sched in (checkpoint.get("lr_schedulers") or []) if order is not None else []:
                remap_scheduler_state(sched, order)  # base lrs are per group (one optimizer here)

    def _check_checkpoint_classes(self, checkpoint: dict) -> None:
        """A checkpoint trained on another class count cannot be resumed or evaluated on this data: say so (naming
        the keys) before its weights fail to load with a size-mismatch wall."""
        config = checkpoint.get("vitkit_detector_config") or {}
        saved = (config.get("init_args") or {}).get("num_classes")
        if saved is None:
            saved = (checkpoint.get("hyper_parameters") or {}).get("num_classes")
        if saved is None or int(saved) == self.detector.num_classes:
            return
        names = (checkpoint.get("hyper_parameters") or {}).get("class_names") or []
        shown = f" ({', '.join(map(str, names[:8]))}{', ...' if len(names) > 8 else ''})" if names else ""
        raise ConfigError(
            f"num_classes: the checkpoint was trained on {saved} classes{shown}, but data.root gives "
            f"{self.detector.num_classes} classes (the class count comes from the annotation file). Fix: point "
            "data.root at the dataset the checkpoint was trained on; to train on this dataset, start a new run "
            "instead of resuming (--ckpt_path resumes the same run)")

    def forward(self, images: Tensor, mask: Tensor | None = None) -> dict:
        return self.detector(images, mask)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        images, mask, targets = batch
        outputs = self.detector(images, mask, targets)
        losses = self.criterion(outputs, targets)
        loss = losses["loss"]
        if check_finite_loss(loss, mode=self.hparams.nonfinite, step=self.global_step, epoch=self.current_epoch,
                             batch_idx=batch_idx, image_ids=lambda: [int(t["image_id"]) for t in targets]):
            self._skip_update = True
            self._skipped_steps += 1
            self.log("train/skipped_steps", float(self._skipped_steps), on_step=True, on_epoch=False, batch_size=1)
            return zero_loss_like(self, loss)
        B = images.shape[0]
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=B)
        for k in ("loss_ce", "loss_bbox", "loss_giou"):
            if k in losses:
                self.log(f"train/{k}", losses[k], batch_size=B)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        images, mask, targets = batch
        outputs = self.detector(images, mask)
        sizes = torch.stack([t["orig_size"] for t in targets]).to(images.device)  # (B, 2) [h, w]
        dets = self.postprocess(outputs, sizes)
        cat_ids = self.hparams.label_to_cat_id
        for t, d in zip(targets, dets, strict=True):
            image_id = int(t["image_id"])
            self._val_image_ids.append(image_id)
            boxes, scores, labels = d["boxes"].float().cpu(), d["scores"].float().cpu(), d["labels"].cpu()
            finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)  # (K,)
            if not bool(finite.all()):  # a diverged model: NaN boxes are no detections (COCOeval would refuse them)
                self._val_nonfinite += int((~finite).sum())
                boxes, scores, labels = boxes[finite], scores[finite], labels[finite]
            xywh = torch.cat((boxes[:, :2], boxes[:, 2:] - boxes[:, :2]), dim=1)  # (K, 4)
            for box, score, label in zip(xywh.tolist(), scores.tolist(), labels.tolist(), strict=True):
                cat = cat_ids[label] if cat_ids else label
                self._val_results.append({"image_id": image_id, "category_id": int(cat),
                                          "bbox": [round(v, 3) for v in box], "score": round(score, 5)})

    def on_validation_epoch_start(self) -> None:
        self._val_results, self._val_image_ids, self._val_nonfinite = [], [], 0

    def on_before_optimizer_step(self, optimizer) -> None:
        if self._skip_update:  # a skipped step: drop its (zero) gradients, so AdamW leaves weights and moments alone
            self._skip_update = False
            for p in self.parameters():
                p.grad = None

    def on_validation_epoch_end(self) -> None:
        dm = self.trainer.datamodule
        if self.trainer.sanity_checking or dm is None or not hasattr(dm, "val_annotation_file"):
            return
        if self._val_nonfinite:
            warnings.warn(f"validation: {self._val_nonfinite} detections with non-finite boxes or scores dropped "
                          "(the model produced NaN/inf)", RuntimeWarning, stacklevel=2)
        # Collective calls: every rank gathers, so every rank computes (and logs) the same stats.
        results = gather_results(self._val_results, self._val_image_ids)
        image_ids = gather_image_ids(self._val_image_ids)
        res = evaluate_coco(dm.val_annotation_file, results, image_ids=image_ids, backend=self.hparams.eval_backend)
        self.last_eval, self.last_results = res, results
        if self.trainer.is_global_zero and self.trainer.state.fn == "fit":
            self.print(res.summary)
        for k in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
            self.log(f"val/{k}", float(res.stats[k]), prog_bar=k in ("AP", "AP50"))
        self._val_results, self._val_image_ids = [], []

    def _param_groups(self, detector: nn.Module) -> list[dict]:
        hp = self.hparams
        return adamw_param_groups(detector, hp.lr, hp.weight_decay, "encoder.patch_embed.", hp.backbone_lr_mult)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if not clip_fused_gradients(self, self.trainer, optimizer, gradient_clip_val, gradient_clip_algorithm):
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        hp = self.hparams
        opt = adamw(self._param_groups(self.detector), lr=hp.lr, weight_decay=hp.weight_decay,
                    fused=not uses_grad_scaler(self.trainer))
        sched = warmup_schedule(opt, int(self.trainer.estimated_stepping_batches), hp.warmup_steps, hp.min_lr_ratio,
                                schedule=hp.schedule, lr_drop=hp.lr_drop)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
