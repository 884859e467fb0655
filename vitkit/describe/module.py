"""DenseModule: joint training of a DETR detector and its region caption head (region captions, issue 17).

It is :class:`vitkit.detection.module.DetectionModule` (the same criterion, matcher, optimiser groups, schedule,
detection validation and checkpoint checks) plus a :class:`~vitkit.describe.model.RegionCaptionHead`:

- **Training**: the detection losses as they are, plus ``caption_weight`` x the head's label-smoothed caption
  cross-entropy over the queries that the final layer's Hungarian matching assigns to objects with a caption
  (targets' ``has_caption`` and ``caption_tokens``; objects without one train the detector only). A batch
  without any captioned match still touches every head parameter (a zero term), so DDP needs no
  ``find_unused_parameters``.
- **Validation**: COCO AP of the detections (the parent's), and the region captions of the validation split (the
  ground-truth boxes captioned as given boxes, and the detections captioned) kept for the task's metrics.
- **Checkpoints**: the region tokenizer comes from the datamodule at setup (or from a checkpoint, whose tokenizer
  wins) and is saved in the run folder; every checkpoint records the inference spec of task ``describe``
  (:func:`vitkit.describe.export.checkpoint_spec`: both networks' configs, which the CLI sets as
  ``detector_config`` and ``text_config``, the head's settings and the tokenizer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vitkit.captioning.model import Captioner
from vitkit.captioning.tokenizer import CaptionTokenizer, tokenizer_mismatch
from vitkit.describe.export import checkpoint_spec
from vitkit.describe.model import Conditioning, RegionCaptioner, RegionCaptionHead, detector_outputs
from vitkit.detection.model import DETR
from vitkit.detection.module import DetectionModule
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


class DenseModule(DetectionModule):
    """Train and validate a detector with region captions.

    Args:
        detector: the DETR (its class count is linked from the data, as for detection).
        text: the region caption text decoder, a :class:`Captioner` built with ``encoder: null`` (its vocabulary
            size and special ids are linked from the datamodule's region tokenizer).
        conditioning: "prefix" or "roi" (:mod:`vitkit.describe.model`).
        roi_size: RoI-aligned tokens per side with "roi".
        max_regions: captioned regions per training batch, at most.
        caption_weight: weight of the caption cross-entropy in the total loss.
        **detection: :class:`DetectionModule`'s options (losses, matcher costs, optimiser, schedule, ...).
    """

    def __init__(self, detector: DETR, text: Captioner, conditioning: Conditioning = "roi", roi_size: int = 7,
                 max_regions: int = 64, caption_weight: float = 1.0, **detection: Any) -> None:
        super().__init__(detector, **detection)
        self.save_hyperparameters(ignore=["detector", "text", "loss_type"])
        self.head = RegionCaptionHead(detector.decoder.dim, text, conditioning, roi_size, max_regions)
        self.tokenizer: CaptionTokenizer | None = None  # from the datamodule at setup, or from a checkpoint

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

    def describer(self) -> RegionCaptioner:
        """The detector and head as one inference model (a view: the same modules, not registered again)."""
        return RegionCaptioner(self.detector, self.head)

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

    def param_groups(self) -> list[dict]:
        """The detector's AdamW groups (patch source at ``backbone_lr_mult``), then the head's (no decay on norms,
        biases and embeddings)."""
        hp = self.hparams
        return self._param_groups(self.detector) + adamw_param_groups(self.head, hp.lr, hp.weight_decay)
