"""DescribeModule: joint training of a DETR detector and its region caption head (describe: detect, then caption
each object; issue 17).

It is :class:`vitkit.detection.module.DetectionModule` (the same criterion, matcher, optimiser groups, schedule,
detection validation and checkpoint checks) plus a :class:`~vitkit.describe.model.RegionCaptionHead`:

- **Training**: the detection losses as they are, plus ``caption_weight`` x the head's label-smoothed caption
  cross-entropy over the queries that the final layer's Hungarian matching assigns to objects with a caption
  (targets' ``has_caption`` and ``caption_tokens``; objects without one train the detector only). A batch
  without any captioned match still touches every head parameter (a zero term), so DDP needs no
  ``find_unused_parameters``.
- **Validation**: COCO AP of the detections (the parent's, ``val/AP`` ...) and, with a datamodule that gives
  ``val_references`` and a tokenizer, the describe metrics of :mod:`vitkit.describe.validation`:
  ``val/describe_mAP`` (DenseCap's dense-captioning mAP of the detections above ``describe_eval_threshold`` and
  their greedy captions; annotations without a phrase are ignored like crowd regions), ``val/region_CIDEr`` (CIDEr-D
  of the ground-truth boxes captioned as given boxes) and ``val/region_attr_acc`` (the share of correctly detected
  objects whose caption is their phrase). Each step keeps plain per-image records; the epoch end gathers them across
  ranks as the detection results are gathered (one rank's copy per image) and scores them once, METEOR in one Java
  process (or a named fallback without Java). ``describe_eval_max_images`` bounds the cost on large validation
  splits.
- **Checkpoints**: the region tokenizer comes from the datamodule at setup (or from a checkpoint, whose tokenizer
  wins) and is saved in the run folder; every checkpoint records the inference spec of task ``describe``
  (:func:`vitkit.describe.spec.checkpoint_spec`: both networks' configs, which the CLI sets as
  ``detector_config`` and ``text_config``, the head's settings and the tokenizer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from vitkit.captioning.model import Captioner
from vitkit.captioning.tokenizer import CaptionTokenizer, tokenizer_mismatch
from vitkit.describe.model import DescribeModel, RegionCaptionHead, detector_outputs
from vitkit.describe.spec import checkpoint_spec
from vitkit.describe.validation import per_rank_cap, region_metrics, region_records
from vitkit.detection.model import DETR
from vitkit.detection.module import DetectionModule
from vitkit.eval.gather import gather_results
from vitkit.train.guards import ConfigError
from vitkit.train.optim import adamw_param_groups
from vitkit.utils.spec import read_spec, write_spec


def stack_caption_tokens(targets: list[dict], pairs: list[tuple[int, int]], pad_id: int) -> Tensor:
    """(R, T) caption ids of the matched (image, target) pairs, right-padded with ``pad_id`` to the longest."""
    rows = [targets[b]["caption_tokens"][t] for b, t in pairs]  # each (T_b,)
    T = max(len(r) for r in rows)
    out = rows[0].new_full((len(rows), T), pad_id)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


class DescribeModule(DetectionModule):
    """Train and validate a detector that captions each object it finds.

    Args:
        detector: the DETR (its class count is linked from the data, as for detection).
        text: the region caption text decoder, a :class:`Captioner` built with ``encoder: null`` (its vocabulary
            size and special ids are linked from the datamodule's region tokenizer).
        roi_size: RoI-aligned tokens per side of each region's memory (:mod:`vitkit.describe.model`).
        max_regions: captioned regions per training batch, at most.
        caption_weight: weight of the caption cross-entropy in the total loss.
        describe_eval_threshold: lowest detection score kept for the describe validation (a low one: the describe
            mAP needs the tail; GRiT tests at 0.02).
        describe_eval_max_detections: at most this many detections per image (by score) are captioned for it.
        describe_eval_max_images: caption at most this many validation images per validation (split over the ranks);
            None = the whole split. The detection AP always covers the whole split.
        **detection: :class:`DetectionModule`'s options (losses, matcher costs, optimiser, schedule, ...).

    Raises:
        ValueError: ``describe_eval_max_detections`` < 1 or ``describe_eval_max_images`` < 0.
    """

    def __init__(self, detector: DETR, text: Captioner, roi_size: int = 7, max_regions: int = 64,
                 caption_weight: float = 1.0, describe_eval_threshold: float = 0.02,
                 describe_eval_max_detections: int = 100, describe_eval_max_images: int | None = None,
                 **detection: Any) -> None:
        super().__init__(detector, **detection)  # its save_hyperparameters records these arguments too
        max_images = describe_eval_max_images
        if describe_eval_max_detections < 1 or (max_images is not None and max_images < 0):
            raise ValueError("model.describe_eval_max_detections must be >= 1 and model.describe_eval_max_images >= 0 "
                             f"(or null), got {describe_eval_max_detections} and {max_images}")
        self.head = RegionCaptionHead(detector.decoder.dim, text, roi_size, max_regions)
        self.tokenizer: CaptionTokenizer | None = None  # from the datamodule at setup, or from a checkpoint
        self._describe_records: list[dict] = []  # this validation's region captions, one record per image
        self._describe_references: tuple[Path, dict] | None = None  # (val file, its references), read once
        self.last_describe: dict | None = None  # region_metrics of the latest validation epoch
        self._val_outputs: dict | None = None  # the current validation batch's detector outputs

    # The networks are saved as weights, not hyper-parameters (DetectionModule's one save_hyperparameters call reads
    # these arguments too: Lightning collects every __init__ frame up the call chain).
    hparams_ignore: ClassVar[tuple[str, ...]] = (*DetectionModule.hparams_ignore, "text")

    text_config: dict | None = None  # set by the CLI: resolved class_path/init_args of the text decoder

    # --------------------------------------------------------------------------------------------- state
    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        if self.tokenizer is None and dm is not None and hasattr(dm, "tokenizer"):
            self.tokenizer = dm.tokenizer
        if self.tokenizer is not None:
            self._check_tokenizer(self.tokenizer, "the datamodule's tokenizer")

    def _check_tokenizer(self, tok: CaptionTokenizer, what: str) -> None:
        problem = tokenizer_mismatch(tok, self.head.text, what, "text decoder", "model.text")
        if problem is not None:
            raise ConfigError(problem)

    def on_fit_start(self) -> None:
        log_dir = self.trainer.log_dir  # a collective call under DDP: every rank asks
        if self.tokenizer is not None and self.logger is not None and log_dir is not None \
                and self.trainer.is_global_zero:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            self.tokenizer.save(Path(log_dir) / "tokenizer.json")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.detector_config is None or self.text_config is None or self.tokenizer is None:
            return  # not built through the CLI, or no data yet
        datamodule = self._trainer.datamodule if self._trainer is not None else None
        data_hparams = dict(datamodule.hparams) if datamodule is not None else {}
        write_spec(checkpoint, checkpoint_spec(self.detector_config, self.text_config, self.tokenizer.to_str(),
                                               dict(self.hparams), data_hparams))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """The detection checks, both networks' configs and the checkpoint's tokenizer (it wins over the data's: a
        re-trained BPE or WordPiece tokenizer may number tokens differently; the datamodule then uses it)."""
        super().on_load_checkpoint(checkpoint)
        spec = read_spec(checkpoint)
        if spec is None or spec.task != "describe":
            return
        self.detector_config, self.text_config = spec.model_config["detector"], spec.model_config["text"]
        if self.tokenizer is not None and self.tokenizer.to_str() == spec.tokenizer:
            return
        tokenizer = CaptionTokenizer.from_str(spec.tokenizer)
        self._check_tokenizer(tokenizer, "the checkpoint's tokenizer")
        self.tokenizer = tokenizer
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is not None and hasattr(dm, "use_tokenizer"):
            dm.use_tokenizer(tokenizer, "the checkpoint")

    def describer(self) -> DescribeModel:
        """The detector and head as one inference model (a view: the same modules, not registered again)."""
        return DescribeModel(self.detector, self.head)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        images, mask, targets = batch
        outputs = detector_outputs(self.detector, images, mask, targets)
        losses = self.criterion(outputs, targets)
        caption = self.caption_loss(outputs, targets)
        loss = losses["loss"] + self.hparams.caption_weight * caption
        skipped = self.skip_nonfinite(loss, batch_idx, image_ids=lambda: [int(t["image_id"]) for t in targets])
        if skipped is not None:
            return skipped
        B = images.shape[0]
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=B)
        self.log("train/loss_caption", caption, prog_bar=True, on_step=True, on_epoch=True, batch_size=B)
        for k in ("loss_ce", "loss_bbox", "loss_giou"):
            if k in losses:
                self.log(f"train/{k}", losses[k], batch_size=B)
        return loss

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
        """The detection AP (the parent's), then ``val/describe_mAP``, ``val/region_CIDEr`` and
        ``val/region_attr_acc`` of the gathered region captions (every rank gathers, scores and logs the same
        values)."""
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
