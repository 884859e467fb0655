"""The image-caption side of :class:`~vitkit.describe.module.DenseModule`: training (cross-entropy, then SCST) and
validation of its optional :class:`~vitkit.describe.image_head.ImageCaptionHead`.

Kept apart from the module so that the region-caption module stays readable; :class:`ImageCaptionSteps` is mixed
into it and reads its hyper-parameters (``image_caption_weight``, ``val_beams``, ``scst_start``, ``scst_samples``,
``scst_baseline``, ``java``). The SCST reward is the caption task's (CIDEr-D over the training split's image
captions, document frequencies built once, identical on every rank); validation captions every validation image
and scores the gathered captions once with pycocoevalcap (:class:`~vitkit.eval.caption_metrics.CaptionScorer`),
logged as ``val/caption_<metric>`` (``val/caption_CIDEr``: CIDEr-D).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from vitkit.captioning.model import memory_rows
from vitkit.captioning.module import CaptionModule, unique_entries
from vitkit.captioning.scst import caption_rewards, scst_memory_step
from vitkit.describe.image_head import ImageCaptionHead, Memory, query_probs
from vitkit.eval.caption_metrics import CaptionScorer
from vitkit.train.guards import ConfigError
from vitkit.utils.distributed import all_gather_objects


class ImageCaptionSteps:
    """Mixin: image captions on a detection module with ``image_head`` (None = off), ``tokenizer`` and ``detector``."""

    image_head: ImageCaptionHead | None

    def _init_image_captions(self) -> None:
        self.image_cider = None  # the SCST reward's CiderD, built at fit start
        self._caption_entries: list[tuple[int, str, list[str]]] = []
        self._caption_scorer: CaptionScorer | None = None
        self.last_caption_metrics: dict[str, float] = {}

    def image_memory(self, outputs: dict) -> Memory:
        return self.image_head.memory(outputs, query_probs(outputs["pred_logits"], self.detector.sigmoid_head))

    # ------------------------------------------------------------------------------------------ training
    def setup_image_reward(self) -> None:
        """At fit start with SCST: the CIDEr-D statistics of the training image captions (a collective call)."""
        if self.image_head is None or self.hparams.scst_start is None or self.image_cider is not None:
            return
        dm = self.trainer.datamodule
        self.image_cider = CaptionModule.build_reward(dm.image_captions("train"), dm)

    scst_active = CaptionModule.scst_active  # past scst_start x the schedule's steps: image captions train by SCST

    def image_caption_loss(self, outputs: dict, targets: list[dict]) -> Tensor:
        """The image captions' cross-entropy (or SCST loss) of a training batch; a zero reaching every head
        parameter when no image has a caption."""
        if "image_caption_tokens" not in targets[0]:
            raise ConfigError("model.image_text is set but the training targets have no image captions: set "
                              "data.image_captions: true")
        text = self.image_head.text
        tokens = torch.stack([t["image_caption_tokens"] for t in targets]).to(outputs["pred_boxes"].device)  # (B, T)
        keep = tokens[:, 0] == text.bos_id  # (B,) images with a caption
        if not bool(keep.any()):
            return sum(p.sum() for p in self.image_head.parameters()) * 0.0
        memory = memory_rows(*self.image_memory(outputs), keep)
        if not self.scst_active:
            return self.image_head.loss(memory, tokens[keep])
        hp = self.hparams
        ids = [int(t["image_id"]) for t, k in zip(targets, keep.tolist(), strict=True) if k]
        out = scst_memory_step(text, *memory, ids, self._image_reward, hp.scst_samples, hp.scst_baseline)
        self.log("scst/reward", out.reward, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(ids))
        return out.loss

    def _image_reward(self, ids: Tensor, keys: list) -> np.ndarray:
        """CIDEr-D of (R, T) caption ids against their images' training captions."""
        return caption_rewards(self.image_cider, self.tokenizer, ids, keys)

    # ---------------------------------------------------------------------------------------- validation
    def image_caption_validation_step(self, outputs: dict, targets: list[dict]) -> None:
        """Caption a validation batch (``val_beams``: 1 = greedy) and keep the captions with their references."""
        hp = self.hparams
        method = "greedy" if hp.val_beams == 1 else "beam"
        ids, _ = self.image_head.generate(self.image_memory(outputs), method=method, num_beams=hp.val_beams)
        captions = self.tokenizer.decode_batch(ids.cpu())
        self._caption_entries += [(int(t["image_id"]), c, list(t.get("image_captions", [])))
                                  for t, c in zip(targets, captions, strict=True)]

    def image_caption_epoch_end(self) -> None:
        """Score the gathered validation captions (rank 0), log ``val/caption_*`` on every rank."""
        entries = unique_entries(all_gather_objects(self._caption_entries))
        self._caption_entries = []
        entries = [e for e in entries if e[2]]  # images with references
        if self.trainer.sanity_checking or not entries:
            return
        metrics: dict[str, float] | None = None
        if self.trainer.is_global_zero:
            if self._caption_scorer is None:
                self._caption_scorer = CaptionScorer(self.hparams.java)
            metrics = self._caption_scorer({i: r for i, _, r in entries}, {i: c for i, c, _ in entries})
        metrics = self.trainer.strategy.broadcast(metrics, src=0)
        self.last_caption_metrics = metrics
        for k, v in metrics.items():
            self.log(f"val/caption_{k}", float(v), prog_bar=k == "CIDEr", sync_dist=True)  # equal on all ranks
        if self.trainer.is_global_zero and self.trainer.state.fn == "fit":
            self.print(f"epoch {self.current_epoch} image captions ({len(entries)} images): CIDEr-D "
                       f"{metrics.get('CIDEr', float('nan')):.4f}  BLEU-4 {metrics.get('Bleu_4', float('nan')):.4f}")
            for i, c, r in entries[:2]:
                self.print(f"  image {i}: {c!r}  (reference: {r[0]!r})")

    def close_caption_scorer(self) -> None:
        if self._caption_scorer is not None:
            self._caption_scorer.close()
            self._caption_scorer = None
