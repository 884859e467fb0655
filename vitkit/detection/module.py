"""DetectionModule: Lightning training/validation of an injected :class:`vitkit.detection.DETR`.

Owns the optimisation recipe (AdamW, backbone lr multiplier, weight-decay groups, warmup + cosine or step schedule);
the detector and the :class:`~vitkit.detection.SetCriterion` are injected and bound together here.
"""

from __future__ import annotations

import warnings
from typing import ClassVar, Literal

import torch
from torch import Tensor

from vitkit.detection import PostProcess, SetCriterion
from vitkit.detection.model import DETR
from vitkit.detection.spec import checkpoint_spec
from vitkit.eval.coco_eval import evaluate_coco
from vitkit.eval.coco_results import detection_entries
from vitkit.eval.gather import gather_image_ids, gather_results
from vitkit.training.guards import ConfigError
from vitkit.training.module import TaskModule
from vitkit.training.optim import adamw_param_groups
from vitkit.utils.spec import read_spec, write_spec


class DetectionModule(TaskModule):
    """Train and validate a DETR-style detector.

    Args:
        detector: the model (its class head must have ``num_classes`` outputs, plus one for softmax heads).
        criterion: the set-prediction loss with its matcher, bound here to the detector's class count and head.
        num_classes: number of classes, linked from the datamodule (checked against the detector).
        lr, backbone_lr_mult: base learning rate (transformer and heads), multiplier for the patch source.
        weight_decay: AdamW weight decay; norms, biases, embeddings and tokens get none.
        warmup_steps: linear warmup steps.
        schedule: "cosine" (to ``min_lr_ratio`` x lr) or "step" (x0.1 at fraction ``lr_drop`` of the total steps).
        num_select: detections kept per image by the post-processor.
        eval_backend: COCOeval implementation for validation: "faster" (faster-coco-eval) or "pycocotools".
        class_names, label_to_cat_id: category names and contiguous label -> dataset category id, filled from the
            datamodule and kept in checkpoints.
        nonfinite: on a NaN/inf training loss, "raise" (error naming the step and image ids) or "skip" (no weight
            or optimizer update, step counter and lr schedule advance, a warning); under DDP all ranks skip together.
    """

    # The constructor's parts (networks and the loss), not hyper-parameters; a subclass names its own parts here.
    parts: ClassVar[tuple[str, ...]] = ("detector", "criterion")
    # Losses logged beside ``train/loss``: key -> shown in the progress bar (and then also averaged per epoch).
    logged_losses: ClassVar[dict[str, bool]] = {"loss_ce": False, "loss_bbox": False, "loss_giou": False}

    def __init__(
        self,
        detector: DETR,
        criterion: SetCriterion,
        num_classes: int | None = None,
        lr: float = 1e-4,
        backbone_lr_mult: float = 0.1,
        weight_decay: float = 1e-4,
        warmup_steps: int = 0,
        schedule: str = "step",
        lr_drop: float = 2 / 3,
        min_lr_ratio: float = 0.01,
        num_select: int = 100,
        eval_backend: str = "faster",
        class_names: list[str] | None = None,
        label_to_cat_id: list[int] | None = None,
        nonfinite: Literal["raise", "skip"] = "raise",
    ) -> None:
        super().__init__(nonfinite)
        self.save_hyperparameters(ignore=list(self.parts))
        if num_classes is not None and num_classes != detector.num_classes:
            raise ValueError(
                f"model.num_classes: the data has {num_classes} classes but the detector was built for "
                f"{detector.num_classes}; drop the detector's num_classes from the config (it is linked from data)"
            )
        if schedule not in ("cosine", "step"):
            raise ValueError(f"model.schedule must be 'cosine' or 'step', got {schedule!r}")
        self.detector = detector
        sigmoid = bool(detector.sigmoid_head)  # the head decides the loss, the matching cost and the scores
        self.criterion = criterion.bind(detector.num_classes, sigmoid)
        self.postprocess = PostProcess(sigmoid=sigmoid, num_select=num_select)
        self._val_results: list[dict] = []
        self._val_image_ids: list[int] = []
        self._val_nonfinite = 0  # detections dropped for non-finite boxes/scores in this validation
        self.last_eval = None  # CocoEvalResult of the latest validation epoch
        self.last_results: list[dict] = []  # its gathered COCO results

    detector_config: dict | None = None  # set by the CLI: resolved class_path/init_args of the detector

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.detector_config is None:  # the detector was not built from a config (not through the CLI)
            return
        datamodule = self._trainer.datamodule if self._trainer is not None else None
        data_hparams = dict(datamodule.hparams) if datamodule is not None else {}
        write_spec(checkpoint, checkpoint_spec(self.detector_config, dict(self.hparams), data_hparams))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._check_checkpoint_classes(checkpoint)
        spec = read_spec(checkpoint)
        if spec is not None:
            self.detector_config = spec.model_config

    def _check_checkpoint_classes(self, checkpoint: dict) -> None:
        """Raise, naming the keys, when ``checkpoint`` was trained on another class count."""
        config = spec.model_config if (spec := read_spec(checkpoint)) is not None else {}
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

    def training_forward(self, images: Tensor, mask: Tensor, targets: list[dict]) -> dict:
        """The detector's training outputs (a subclass may ask for more, e.g. the features its own loss reads)."""
        return self.detector(images, mask, targets)

    def training_losses(self, images: Tensor, mask: Tensor, targets: list[dict]) -> tuple[dict, dict[str, Tensor]]:
        """One training batch's ``(outputs, losses)``: the :meth:`training_forward` outputs and the criterion's
        weighted loss dict, whose ``loss`` is the () total (subclasses add their own loss).

        Args:
            images: (B, 3, H, W); mask: (B, H, W) True = padding; targets: B dicts with ``labels`` (n,) and ``boxes``
                (n, 4) normalised cxcywh.
        """
        outputs = self.training_forward(images, mask, targets)
        return outputs, self.criterion(outputs, targets)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        images, mask, targets = batch
        _, losses = self.training_losses(images, mask, targets)
        loss = losses["loss"]
        skipped = self.skip_nonfinite(loss, batch_idx, image_ids=lambda: [int(t["image_id"]) for t in targets])
        if skipped is not None:
            return skipped
        B = images.shape[0]
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=B)
        for k, shown in self.logged_losses.items():
            if k in losses:
                self.log(f"train/{k}", losses[k], prog_bar=shown, on_epoch=shown, batch_size=B)
        return loss

    def validation_forward(self, images: Tensor, mask: Tensor) -> dict:
        """The detector's outputs of a validation batch (a subclass may ask for more and keep them for its metrics)."""
        return self.detector(images, mask)

    def result_entries(self, images: Tensor, mask: Tensor, targets: list[dict]) -> tuple[list[dict], int]:
        """COCO result entries of a validation batch, and how many non-finite detections were dropped.

        Args:
            images: (B, 3, H, W); mask: (B, H, W) True = padding; targets: B dicts with ``image_id`` and
                ``orig_size`` ([h, w]).
        """
        outputs = self.validation_forward(images, mask)
        sizes = torch.stack([t["orig_size"] for t in targets]).to(images.device)  # (B, 2) [h, w]
        dets = self.postprocess(outputs, sizes)
        cat_ids = self.hparams.label_to_cat_id
        entries, dropped = [], 0
        for t, d in zip(targets, dets, strict=True):
            boxes, scores, labels = d["boxes"].float().cpu(), d["scores"].float().cpu(), d["labels"].cpu()
            finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)  # (K,)
            if not bool(finite.all()):  # a diverged model: NaN boxes are no detections (COCOeval would refuse them)
                dropped += int((~finite).sum())
                boxes, scores, labels = boxes[finite], scores[finite], labels[finite]
            entries += detection_entries(boxes, scores, labels, int(t["image_id"]), cat_ids)
        return entries, dropped

    def validation_step(self, batch, batch_idx: int) -> None:
        images, mask, targets = batch
        entries, dropped = self.result_entries(images, mask, targets)
        self._val_image_ids += [int(t["image_id"]) for t in targets]
        self._val_results += entries
        self._val_nonfinite += dropped

    def on_validation_epoch_start(self) -> None:
        self._val_results, self._val_image_ids, self._val_nonfinite = [], [], 0

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

    def param_groups(self) -> list[dict]:
        """AdamW groups of the detector: the patch source (CNN backbone or conv patchify) at ``backbone_lr_mult``."""
        hp = self.hparams
        return adamw_param_groups(self.detector, hp.lr, hp.weight_decay, "encoder.patch_embed.", hp.backbone_lr_mult)

