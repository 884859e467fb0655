"""DescribeModule: joint training of a DETR detector and its region caption head.

A :class:`vitkit.detection.module.DetectionModule` plus a caption loss (``caption_weight`` x cross-entropy over
matched, captioned queries); validation also logs ``val/describe_mAP``, ``val/region_CIDEr`` and
``val/region_attr_acc``. Checkpoints hold the region tokenizer and the ``describe`` inference spec.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from vitkit.captioning.model import Captioner
from vitkit.captioning.tokenizer_lifecycle import TokenizerModuleMixin
from vitkit.describe.model import DescribeModel, RegionCaptionHead, detector_outputs
from vitkit.describe.spec import FIELDS, NAME, checkpoint_spec
from vitkit.describe.validation import per_rank_cap, region_metrics, region_records
from vitkit.detection.criterion import SetCriterion
from vitkit.detection.model import DETR
from vitkit.detection.module import DetectionModule
from vitkit.eval.gather import gather_results
from vitkit.training.optim import adamw_param_groups
from vitkit.utils.spec import read_spec, write_spec


def stack_caption_tokens(targets: list[dict], pairs: list[tuple[int, int]], pad_id: int) -> Tensor:
    """(R, T) caption ids of the matched (image, target) pairs, right-padded with ``pad_id`` to the longest."""
    rows = [targets[b]["caption_tokens"][t] for b, t in pairs]  # each (T_b,)
    T = max(len(r) for r in rows)
    out = rows[0].new_full((len(rows), T), pad_id)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


class DescribeModule(TokenizerModuleMixin, DetectionModule):
    """Train and validate a detector that captions each object it finds.

    Args:
        detector: the DETR (its class count is linked from the data).
        text: the region caption text decoder, a :class:`Captioner` built with ``encoder: null``.
        criterion: the detection loss and its matcher, as :class:`DetectionModule` takes it.
        roi_size: RoI-aligned tokens per side of each region's memory.
        max_regions: captioned regions per training batch, at most.
        caption_weight: weight of the caption cross-entropy in the total loss.
        describe_eval_threshold: lowest detection score kept for the describe validation.
        describe_eval_max_detections: at most this many detections per image (by score) are captioned for it.
        describe_eval_max_images: caption at most this many validation images per validation; None = all.
        num_classes, lr, backbone_lr_mult, weight_decay, warmup_steps, schedule, lr_drop, min_lr_ratio, num_select,
            eval_backend, class_names, label_to_cat_id, nonfinite: :class:`DetectionModule`'s, passed on as given.

    Raises:
        ValueError: ``describe_eval_max_detections`` < 1 or ``describe_eval_max_images`` < 0.
    """

    parts: ClassVar[tuple[str, ...]] = (*DetectionModule.parts, "text")  # networks and the loss: no hyper-parameters
    # The caption loss is shown in the progress bar, beside the detection losses.
    logged_losses: ClassVar[dict[str, bool]] = {"loss_caption": True, **DetectionModule.logged_losses}

    def __init__(
        self,
        detector: DETR,
        text: Captioner,
        criterion: SetCriterion,
        roi_size: int = 7,
        max_regions: int = 64,
        caption_weight: float = 1.0,
        describe_eval_threshold: float = 0.02,
        describe_eval_max_detections: int = 100,
        describe_eval_max_images: int | None = None,
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
        super().__init__(detector, criterion, num_classes=num_classes, lr=lr, backbone_lr_mult=backbone_lr_mult,
                         weight_decay=weight_decay, warmup_steps=warmup_steps, schedule=schedule, lr_drop=lr_drop,
                         min_lr_ratio=min_lr_ratio, num_select=num_select, eval_backend=eval_backend,
                         class_names=class_names, label_to_cat_id=label_to_cat_id, nonfinite=nonfinite)
        max_images = describe_eval_max_images
        if describe_eval_max_detections < 1 or (max_images is not None and max_images < 0):
            raise ValueError("model.describe_eval_max_detections must be >= 1 and model.describe_eval_max_images >= 0 "
                             f"(or null), got {describe_eval_max_detections} and {max_images}")
        self.head = RegionCaptionHead(detector.decoder.dim, text, roi_size, max_regions)
        self._describe_records: list[dict] = []  # this validation's region captions, one record per image
        self._describe_references: tuple[Path, dict] | None = None  # (val file, its references), read once
        self.last_describe: dict | None = None  # region_metrics of the latest validation epoch
        self._val_outputs: dict | None = None  # the current validation batch's detector outputs

    text_config: dict | None = None  # set by the CLI: resolved class_path/init_args of the text decoder

    # --------------------------------------------------------------------------------------------- state
    text_key, text_name = "model.text", "text decoder"

    def text_model(self) -> Captioner:
        """The region head's text decoder: the tokenizer must match its vocabulary size and special ids."""
        return self.head.text

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.detector_config is None or self.text_config is None or self.tokenizer is None:
            return  # not built through the CLI, or no data yet
        datamodule = self._trainer.datamodule if self._trainer is not None else None
        data_hparams = dict(datamodule.hparams) if datamodule is not None else {}
        write_spec(checkpoint, checkpoint_spec(self.detector_config, self.text_config, self.tokenizer_json(),
                                               dict(self.hparams), data_hparams))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """The detection checks, the checkpoint's tokenizer (the mixin's: it wins over the data's) and both networks'
        configs."""
        super().on_load_checkpoint(checkpoint)
        spec = read_spec(checkpoint)
        if spec is not None and spec.task == NAME:
            spec = read_spec(checkpoint, tasks={NAME: FIELDS})  # checked: it holds both networks' configs
            self.detector_config, self.text_config = spec.model_config["detector"], spec.model_config["text"]

    def describer(self) -> DescribeModel:
        """The detector and head as one inference model (a view: the same modules, not registered again)."""
        return DescribeModel(self.detector, self.head)

    def training_forward(self, images: Tensor, mask: Tensor, targets: list[dict]) -> dict:
        """The detector's training outputs with the features the region head reads (:func:`detector_outputs`)."""
        return detector_outputs(self.detector, images, mask, targets)

    def training_losses(self, images: Tensor, mask: Tensor, targets: list[dict]) -> tuple[dict, dict[str, Tensor]]:
        """The detection step's outputs and losses plus ``loss_caption`` (unweighted); ``loss`` is the detection
        total plus ``caption_weight`` x ``loss_caption``. ``targets`` carry ``has_caption`` (n,) bool and
        ``caption_tokens`` (n, T).
        """
        outputs, losses = super().training_losses(images, mask, targets)
        caption = self.caption_loss(outputs, targets)
        loss = losses["loss"] + self.hparams.caption_weight * caption
        return outputs, {**losses, "loss_caption": caption, "loss": loss}

    def caption_loss(self, outputs: dict, targets: list[dict]) -> Tensor:
        """The head's caption cross-entropy over the final layer's matched, captioned objects (a zero that reaches
        every head parameter when there are none)."""
        final = {"pred_logits": outputs["pred_logits"], "pred_boxes": outputs["pred_boxes"]}
        with torch.no_grad(), torch.autocast(outputs["pred_boxes"].device.type, enabled=False):
            indices = self.criterion.matcher(final, targets)
        regions, pairs = self.head.matched_regions(outputs, indices, [t["has_caption"] for t in targets])
        if not pairs:
            return sum(p.sum() for p in self.head.parameters()) * 0.0
        text = self.head.text
        tokens = stack_caption_tokens(targets, pairs, text.pad_id).to(outputs["pred_boxes"].device)  # (R, T)
        return text.loss(self.head.caption_logits(outputs, regions, tokens), tokens)

    # ------------------------------------------------------------------------------------------ validation
    def _describe_datamodule(self) -> Any:
        """The datamodule when it can score the captions (validation references and a tokenizer), else None."""
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is None or not hasattr(dm, "val_references") or self.tokenizer is None:
            return None
        return dm

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._describe_records = []

    def validation_step(self, batch, batch_idx: int) -> None:
        """The detection results (the parent's), then the region captions of the batch's first images while this
        rank's share of ``describe_eval_max_images`` lasts."""
        super().validation_step(batch, batch_idx)  # its forward is validation_forward: the outputs are kept
        outputs, self._val_outputs = self._val_outputs, None
        targets = batch[2]
        if self.trainer.sanity_checking or self._describe_datamodule() is None:
            return
        hp = self.hparams
        room = per_rank_cap(hp.describe_eval_max_images, self.trainer.world_size) - len(self._describe_records)
        k = int(min(room, len(targets)))
        if k > 0:
            self._describe_records += region_records(self.describer().eval(), self.tokenizer, outputs, targets[:k],
                                                     hp.label_to_cat_id, hp.describe_eval_threshold,
                                                     hp.describe_eval_max_detections)

    def validation_forward(self, images: Tensor, mask: Tensor) -> dict:
        """The detector's outputs with the features the region head reads, kept for :meth:`validation_step` (one
        forward serves the detection AP and the captions)."""
        self._val_outputs = detector_outputs(self.detector, images, mask)
        return self._val_outputs

    def on_validation_epoch_end(self) -> None:
        """The detection AP, then ``val/describe_mAP``, ``val/region_CIDEr`` and ``val/region_attr_acc`` (all ranks)."""
        super().on_validation_epoch_end()
        dm = self._describe_datamodule()
        if self.trainer.sanity_checking or dm is None:
            return
        records = gather_results(self._describe_records, [r["image_id"] for r in self._describe_records])  # collective
        self._describe_records = []
        metrics = region_metrics(records, self._val_references(dm))
        self.last_describe = metrics
        for key in ("describe_mAP", "region_CIDEr", "region_attr_acc"):
            self.log(f"val/{key}", metrics[key])
        if self.trainer.is_global_zero and self.trainer.state.fn == "fit":
            right, judged = metrics["attr_counts"]
            self.print(f"region captions of {len(records)} val images: describe mAP {metrics['describe_mAP']:.4f} "
                       f"(METEOR: {metrics['describe_map'].get('meteor_backend')}), region CIDEr-D "
                       f"{metrics['region_CIDEr']:.4f}, attributes right {right}/{judged}")

    def _val_references(self, dm: Any) -> dict:
        """The datamodule's validation references, read once per annotation file."""
        path = Path(dm.val_annotation_file)
        if self._describe_references is None or self._describe_references[0] != path:
            self._describe_references = (path, dm.val_references())
        return self._describe_references[1]

    def param_groups(self) -> list[dict]:
        """The detector's AdamW groups (patch source at ``backbone_lr_mult``), then the head's (no decay on norms,
        biases and embeddings)."""
        hp = self.hparams
        return super().param_groups() + adamw_param_groups(self.head, hp.lr, hp.weight_decay)
