"""CaptionModule: Lightning training/validation of an injected :class:`vitkit.captioning.Captioner`.

Validation logs BLEU-1..4, METEOR, ROUGE-L and CIDEr-D as ``val/*`` (the same values on every rank) and writes the
latest captions as COCO caption results to ``val_captions.json`` in the run folder. Checkpoints hold the tokenizer
and the inference spec.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from vitkit.captioning.model import Captioner
from vitkit.captioning.object_tokens import ObjectTokenHead
from vitkit.captioning.scst import caption_rewards, reward_corpus, scst_step
from vitkit.captioning.spec import checkpoint_spec
from vitkit.captioning.tokenizer_lifecycle import TokenizerModuleMixin
from vitkit.data.collate import rescale_batch
from vitkit.eval.caption_metrics import CaptionScorer
from vitkit.eval.cider import CiderD
from vitkit.training.guards import ConfigError
from vitkit.training.module import TaskModule
from vitkit.training.optim import adamw_param_groups
from vitkit.utils.distributed import all_gather_objects
from vitkit.utils.spec import read_spec, write_spec
from vitkit.viz.recording import grid_stride

_PRINTED_METRICS = ("Bleu_1", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
_PRINTED_SAMPLES = 3  # sample captions printed after each validation
Entry = tuple[int, str, list[str]]  # (image id, generated caption, references)


def unique_entries(per_rank: list[list[Entry]]) -> list[Entry]:
    """Every rank's validation entries, one per image id (the first copy: DistributedSampler repeats images to even
    out the ranks), by image id."""
    unique: dict[int, Entry] = {}
    for e in (e for rank in per_rank for e in rank):
        unique.setdefault(e[0], e)
    return [unique[i] for i in sorted(unique)]


class CaptionModule(TokenizerModuleMixin, TaskModule):
    """Train and validate an image captioner.

    Args:
        captioner: the model; its ``vocab_size`` and special ids are linked from the datamodule's tokenizer.
        lr: peak learning rate.
        encoder_lr_mult: lr multiplier for the image encoder.
        weight_decay: AdamW weight decay; norms, biases, embeddings and tokens get none.
        warmup_steps: linear warmup steps.
        min_lr_ratio: final lr / peak lr of the cosine schedule.
        val_beams: 1 = greedy validation decoding, > 1 = beam search with that many beams.
        java: use Java for METEOR and the PTB tokenizer; None = when ``java`` is on PATH.
        nonfinite: what a NaN/inf training loss does: "raise" stops training with a message naming the step (and
            the batch's image ids when given); "skip" drops the step (no weight or optimizer-state update; step
            counter and lr schedule advance); under DDP all ranks skip together.
        scst_start: share of the run's optimizer steps after which training switches to SCST with a CIDEr-D
            reward, in [0, 1]; None = never.
        scst_samples: sampled captions per image in an SCST step (>= 2).
        object_classes: the training data's category count; None = no object labels.
        object_weight: weight of the object-token loss (0 = off); needs ``data.object_labels: true``.
        low_res_scale: training images' side factor before ``low_res_until``; None = off.
        low_res_until: share of the lr schedule's steps after which training images keep their full size.
        batch_scales: side factors, one drawn uniformly per training batch (times ``low_res_scale`` before
            ``low_res_until``); None = off.
    """
    def __init__(
        self,
        captioner: Captioner,
        lr: float = 5e-4,
        encoder_lr_mult: float = 1.0,
        weight_decay: float = 0.05,
        warmup_steps: int = 200,
        min_lr_ratio: float = 0.01,
        val_beams: int = 1,
        java: bool | None = None,
        nonfinite: Literal["raise", "skip"] = "raise",
        scst_start: float | None = None,
        scst_samples: int = 5,
        object_classes: int | None = None,
        object_weight: float = 0.0,
        low_res_scale: float | None = None,
        low_res_until: float = 0.5,
        batch_scales: list[float] | None = None,
    ) -> None:
        super().__init__(nonfinite)
        self.save_hyperparameters(ignore=["captioner"])
        if val_beams < 1:
            raise ValueError(f"model.val_beams must be >= 1 (1 = greedy), got {val_beams}")
        if scst_start is not None and not 0.0 <= scst_start <= 1.0:
            raise ValueError(f"model.scst_start must be in [0, 1] (a share of the training steps) or null, got "
                             f"{scst_start}")
        if scst_samples < 2:
            raise ValueError(f"model.scst_samples must be >= 2 (each sample's baseline is the mean reward of the "
                             f"image's other samples), got {scst_samples}")
        if low_res_scale is not None and not (0.0 < low_res_scale <= 1.0 and 0.0 <= low_res_until <= 1.0):
            raise ConfigError(f"model.low_res_scale ({low_res_scale}) must be in (0, 1] and model.low_res_until "
                              f"({low_res_until}) in [0, 1]")
        if batch_scales is not None and (not batch_scales or min(batch_scales) <= 0):
            raise ConfigError(f"model.batch_scales must be a non-empty list of side factors > 0 (e.g. [0.83, 1.0, "
                              f"1.17]) or null, got {batch_scales}")
        if object_weight < 0 or (object_weight > 0 and not object_classes):
            raise ConfigError(f"model.object_weight ({object_weight}) must be >= 0, and > 0 needs object labels: set "
                              "data.object_labels: true (it reads instances_train2017.json beside the captions)")
        self.captioner = captioner
        self.object_head = (ObjectTokenHead(captioner.decoder.dim, object_classes) if object_weight > 0 else None)
        self._val_entries: list[tuple[int, str, list[str]]] = []  # (image id, generated, references)
        self._scorer = None  # CaptionScorer kept across validation epochs (rank 0)
        self.last_metrics: dict[str, float] = {}
        self.last_captions: dict[int, str] = {}  # image id -> generated caption of the latest validation
        self.cider: CiderD | None = None  # the SCST reward's statistics, built at fit start

    captioner_config: dict | None = None  # set by the CLI: resolved class_path/init_args of the captioner

    # --------------------------------------------------------------------------------------------- state
    text_key, text_name = "model.captioner", "captioner"

    def text_model(self) -> Captioner:
        """The captioner: the tokenizer must match its vocabulary size and special ids."""
        return self.captioner

    def on_fit_start(self) -> None:
        """The tokenizer's run-folder copy (the mixin's), then the SCST reward's statistics."""
        super().on_fit_start()
        if self.hparams.scst_start is not None and self.cider is None:
            dm = self.trainer.datamodule
            self.cider = self.build_reward(dm.train_references(), dm)

    @staticmethod
    def build_reward(references: dict[int, list[str]], datamodule: Any = None) -> CiderD:
        """The SCST reward's CIDEr-D statistics over the training references, built once (a collective call under
        DDP). A ``datamodule`` with ``hflip_p`` > 0 is refused.
        """
        if getattr(getattr(datamodule, "hparams", None), "hflip_p", 0.0) > 0:
            raise ConfigError("SCST rewards a caption against its image's stored references, which a mirrored "
                              "training image no longer matches: set data.hflip_p 0 with model.scst_start")
        cider = reward_corpus(references)
        digests = all_gather_objects(cider.digest())
        if len(set(digests)) > 1:
            raise RuntimeError(f"SCST: the ranks built different CIDEr-D document frequencies (digests {digests}); "
                               "every rank must read the same training captions")
        return cider

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.captioner_config is None or self.tokenizer is None:  # not built through the CLI, or no data yet
            return
        datamodule = self._trainer.datamodule if self._trainer is not None else None
        data_hparams = dict(datamodule.hparams) if datamodule is not None else {}
        write_spec(checkpoint, checkpoint_spec(self.captioner_config, self.tokenizer_json(), data_hparams))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """The checkpoint's tokenizer (the mixin's: it wins over the data's) and captioner config."""
        super().on_load_checkpoint(checkpoint)
        spec = read_spec(checkpoint)
        if spec is not None and spec.tokenizer is not None:
            self.captioner_config = spec.model_config

    def teardown(self, stage: str) -> None:
        if self._scorer is not None:
            self._scorer.close()
            self._scorer = None

    # ------------------------------------------------------------------------------------------ training
    def forward(self, images: Tensor, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, 3, H, W) images, (B, T) ids, (B, H, W) padding mask -> (B, T, V) teacher-forced logits."""
        return self.captioner(images, tokens, mask)

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        """``(images, mask, tokens)``, ``(images, mask, tokens, image_ids)`` or, with object labels, ``(images, mask,
        tokens, image_ids, objects)`` -> the () loss."""
        images, mask, tokens = batch[:3]
        image_ids = batch[3] if len(batch) > 3 else None
        images, mask = self.train_inputs(images, mask)
        if self.scst_active:
            loss = self._scst_loss(images, mask, image_ids)
            if self.object_head is not None:  # unused here: keep it in the graph, as DDP's reducer expects
                loss = loss + 0.0 * sum(p.sum() for p in self.object_head.parameters())
        else:
            memory, memory_mask, memory_pos, grid = self.captioner.encode_with_grid(images, mask)
            # tokens: (B*k, T), an image's k captions in consecutive rows: they share its memory row
            logits = self.captioner.decode_tokens(tokens, memory, memory_mask, memory_pos)  # (B*k, T, V)
            loss = self.captioner.loss(logits, tokens)
            if self.object_head is not None:
                if len(batch) < 5:
                    raise RuntimeError("model.object_weight > 0 needs training batches with objects: set "
                                       "data.object_labels: true")
                objects = self.object_head.loss(memory, self.captioner.encoder.num_prefix, grid, mask, batch[4])
                self.log("train/object_loss", objects, on_step=True, on_epoch=True, batch_size=images.shape[0])
                loss = loss + self.hparams.object_weight * objects
        skipped = self.skip_nonfinite(loss, batch_idx,
                                      image_ids=None if image_ids is None else lambda: [int(i) for i in image_ids])
        if skipped is not None:
            return skipped
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=images.shape[0])
        return loss

    @property
    def scst_active(self) -> bool:
        """Whether this training step is an SCST step (past ``scst_start`` of the schedule's steps)."""
        return self.reached(self.hparams.scst_start)

    def train_inputs(self, images: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """This step's training images: resized by a factor drawn from ``batch_scales``, and by ``low_res_scale``
        before ``low_res_until``.
        """
        hp = self.hparams
        scale = 1.0 if not hp.batch_scales else hp.batch_scales[int(torch.randint(len(hp.batch_scales), ()))]
        if hp.low_res_scale is not None and self.scheduled and not self.reached(hp.low_res_until):
            scale *= hp.low_res_scale
        if scale == 1.0:
            return images, mask
        return rescale_batch(images, mask, scale, int(grid_stride(self.captioner.encoder)))

    def _scst_loss(self, images: Tensor, mask: Tensor, image_ids: list[int] | None) -> Tensor:
        if image_ids is None:
            raise RuntimeError("SCST needs the training batches' image ids (CaptionCollate's 4th element)")
        out = scst_step(self.captioner, images, mask, [int(i) for i in image_ids], self._reward,
                        self.hparams.scst_samples)
        B = images.shape[0]
        self.log("scst/reward", out.reward, prog_bar=True, on_step=True, on_epoch=True, batch_size=B)
        self.log("scst/baseline", out.baseline, on_step=False, on_epoch=True, batch_size=B)
        return out.loss

    def _reward(self, ids: Tensor, keys: list) -> np.ndarray:
        """CIDEr-D of captions given as (R, T) token ids against their images' training references."""
        return caption_rewards(self.cider, self.tokenizer, ids, keys)

    # ---------------------------------------------------------------------------------------- validation
    def generate(self, images: Tensor, mask: Tensor | None = None) -> list[str]:
        """Caption a batch with the validation decoding settings: (B, 3, H, W) -> B strings."""
        if self.tokenizer is None:
            raise RuntimeError("CaptionModule has no tokenizer: train it through the CLI or load a checkpoint")
        beams = self.hparams.val_beams
        ids, _ = self.captioner.generate(images, mask, method="greedy" if beams == 1 else "beam", num_beams=beams)
        return self.tokenizer.decode_batch(ids.cpu())

    def on_validation_epoch_start(self) -> None:
        self._val_entries = []

    def validation_step(self, batch: tuple[Tensor, Tensor, list[list[str]], list[int]], batch_idx: int) -> None:
        images, mask, references, image_ids = batch
        captions = self.generate(images, mask)
        self._val_entries += [(int(i), c, list(r)) for i, c, r in zip(image_ids, captions, references, strict=True)]

    def _gather_entries(self) -> list[tuple[int, str, list[str]]]:
        """Every rank's (image id, caption, references), one per image (a collective call under DDP)."""
        return unique_entries(all_gather_objects(self._val_entries))

    def score(self, captions: dict[int, str], references: dict[int, list[str]]) -> dict[str, float]:
        """COCO caption metrics of ``captions`` against ``references`` (the METEOR process is kept between calls)."""
        if self._scorer is None:
            self._scorer = CaptionScorer(self.hparams.java)
        return self._scorer(references, captions)

    def on_validation_epoch_end(self) -> None:
        entries = self._gather_entries()
        self._val_entries = []
        if self.trainer.sanity_checking or not entries:
            return
        metrics: dict[str, float] | None = None
        if self.trainer.is_global_zero:
            metrics = self.score({i: c for i, c, _ in entries}, {i: r for i, _, r in entries})
        metrics = self.trainer.strategy.broadcast(metrics, src=0)
        self.last_metrics = metrics
        self.last_captions = {i: c for i, c, _ in entries}
        for k, v in metrics.items():
            self.log(f"val/{k}", float(v), prog_bar=k in ("Bleu_4", "CIDEr"), sync_dist=True)  # equal on all ranks
        if self.trainer.state.fn != "fit":
            return
        run = self.run_folder()
        if self.trainer.is_global_zero:
            if run is not None:
                self._write_captions(run / "val_captions.json", entries)
            line = "  ".join(f"{k} {metrics[k]:.4f}" for k in _PRINTED_METRICS if k in metrics)
            self.print(f"epoch {self.current_epoch} val ({len(entries)} images): {line}")
            for i, c, r in entries[:_PRINTED_SAMPLES]:
                self.print(f"  image {i}: {c!r}  (reference: {r[0]!r})")

    @staticmethod
    def _write_captions(path: Path, entries: list[tuple[int, str, list[str]]]) -> None:
        """The latest validation captions as COCO caption results (``image_id``, ``caption``)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([{"image_id": i, "caption": c} for i, c, _ in entries], indent=0))

    # ----------------------------------------------------------------------------------------- optimiser
    def param_groups(self) -> list[dict]:
        """AdamW groups of the captioner: the image encoder at ``encoder_lr_mult`` (the schedule is cosine)."""
        hp = self.hparams
        groups = adamw_param_groups(self.captioner, hp.lr, hp.weight_decay, "encoder.", hp.encoder_lr_mult)
        if self.object_head is not None:
            groups += adamw_param_groups(self.object_head, hp.lr, hp.weight_decay)
        return groups
