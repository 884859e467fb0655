"""CaptionModule: Lightning training/validation of an injected :class:`vitkit.captioning.Captioner`.

Training is teacher forcing with the Captioner's label-smoothed cross-entropy; validation captions the whole
validation split (greedy, or beam search with ``val_beams > 1``) and scores it once per validation epoch with
pycocoevalcap's BLEU-1..4, METEOR, ROUGE-L and CIDEr-D (:mod:`vitkit.eval.caption_metrics`). Under DDP every rank
captions its share, rank 0 scores the gathered captions and broadcasts the numbers so that every rank logs the
same ``val/*`` values (ModelCheckpoint monitors ``val/CIDEr`` on every rank). The METEOR Java process is started
once and kept across validation epochs. The latest validation captions are written to the run folder as COCO
caption results (``val_captions.json``, scorable with ``tools/eval.py --captions-results``).

The tokenizer comes from the datamodule (or from a checkpoint) and is saved in every checkpoint
(``vitkit_tokenizer``) with the resolved captioner config (``vitkit_captioner_config``), so a checkpoint alone
rebuilds a captioning model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch.distributed as dist
from torch import Tensor

from vitkit.captioning.model import Captioner
from vitkit.captioning.tokenizer import CaptionTokenizer
from vitkit.eval.caption_metrics import CaptionScorer
from vitkit.train.guards import ConfigError, check_finite_loss, check_nonfinite_mode, zero_loss_like
from vitkit.train.optim import adamw, adamw_param_groups, clip_fused_gradients, uses_grad_scaler, warmup_schedule

_PRINTED_METRICS = ("Bleu_1", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class CaptionModule(L.LightningModule):
    """Train and validate an image captioner.

    Args:
        captioner: the model; its ``vocab_size`` and special ids are linked from the datamodule's tokenizer.
        lr: peak learning rate.
        encoder_lr_mult: lr multiplier for the image encoder (e.g. 0.1 for a pretrained one).
        weight_decay: AdamW weight decay; norms, biases, embeddings and tokens get none.
        warmup_steps: linear warmup steps.
        min_lr_ratio: final lr / peak lr of the cosine schedule.
        val_beams: 1 = greedy validation decoding, > 1 = beam search with that many beams.
        val_length_penalty: beam search length penalty.
        val_max_length: longest generated sequence (BOS and EOS included); None = the captioner's ``max_length``.
        num_samples: sample captions printed after each validation.
        java: use Java for METEOR and the PTB tokenizer; None = when ``java`` is on PATH (see
            :func:`vitkit.eval.caption_metrics.caption_metrics`).
        nonfinite: what a NaN/inf training loss does: "raise" stops training with a message naming the step (and the
            batch's image ids when the training batch carries them as a 4th element); "skip" drops the step (no
            weight or optimizer-state update; the step counter and the lr schedule advance). Under DDP all ranks
            skip together.
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
        val_length_penalty: float = 1.0,
        val_max_length: int | None = None,
        num_samples: int = 3,
        java: bool | None = None,
        nonfinite: Literal["raise", "skip"] = "raise",
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["captioner"])
        check_nonfinite_mode(nonfinite)
        if val_beams < 1:
            raise ValueError(f"model.val_beams must be >= 1 (1 = greedy), got {val_beams}")
        self.captioner = captioner
        self.tokenizer: CaptionTokenizer | None = None  # from the datamodule at setup, or from a checkpoint
        self._val_entries: list[tuple[int, str, list[str]]] = []  # (image id, generated, references)
        self._scorer = None  # CaptionScorer kept across validation epochs (rank 0)
        self.last_metrics: dict[str, float] = {}
        self.last_captions: dict[int, str] = {}  # image id -> generated caption of the latest validation
        self._skip_update = False  # set by a skipped (non-finite) step, cleared before the optimizer step
        self._skipped_steps = 0

    captioner_config: dict | None = None  # set by the CLI: resolved class_path/init_args of the captioner

    # --------------------------------------------------------------------------------------------- state
    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        if self.tokenizer is None and dm is not None and hasattr(dm, "tokenizer"):
            self.tokenizer = dm.tokenizer
        if self.tokenizer is not None:
            self._check_tokenizer(self.tokenizer, "the datamodule's tokenizer")

    def _check_tokenizer(self, tok: CaptionTokenizer, what: str) -> None:
        c = self.captioner
        theirs = (tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id)
        ours = (c.vocab_size, c.pad_id, c.bos_id, c.eos_id)
        if theirs != ours:
            raise ConfigError(f"{what} (vocab_size, pad, bos, eos ids) = {theirs} does not match the captioner's "
                              f"{ours}; leave model.captioner.init_args.vocab_size and the special ids out of the "
                              "config (they are linked from data)")

    def _run_folder(self) -> Path | None:
        """The logger's run folder (``trainer.log_dir`` is a collective call under DDP: every rank must ask)."""
        log_dir = self.trainer.log_dir
        return Path(log_dir) if self.logger is not None and log_dir is not None else None

    def on_fit_start(self) -> None:
        run = self._run_folder()
        if self.tokenizer is not None and self.trainer.is_global_zero and run is not None:
            run.mkdir(parents=True, exist_ok=True)
            self.tokenizer.save(run / "tokenizer.json")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.captioner_config is not None:
            checkpoint["vitkit_captioner_config"] = self.captioner_config
        if self.tokenizer is not None:
            checkpoint["vitkit_tokenizer"] = self.tokenizer.to_str()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.captioner_config = checkpoint.get("vitkit_captioner_config", self.captioner_config)
        saved = checkpoint.get("vitkit_tokenizer")
        if saved is None:
            return
        if self.tokenizer is not None and self.tokenizer.to_str() == saved:
            return
        # The checkpoint's tokenizer wins (a re-trained BPE/WordPiece tokenizer may number tokens differently); the
        # datamodule tokenises with it from now on.
        tokenizer = CaptionTokenizer.from_str(saved)
        self._check_tokenizer(tokenizer, "the checkpoint's tokenizer")
        self.tokenizer = tokenizer
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is not None and hasattr(dm, "use_tokenizer"):
            dm.use_tokenizer(tokenizer, "the checkpoint")

    def teardown(self, stage: str) -> None:
        if self._scorer is not None:
            self._scorer.close()
            self._scorer = None

    # ------------------------------------------------------------------------------------------ training
    def forward(self, images: Tensor, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, 3, H, W) images, (B, T) ids, (B, H, W) padding mask -> (B, T, V) teacher-forced logits."""
        return self.captioner(images, tokens, mask)

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        """``(images, mask, tokens)`` or ``(images, mask, tokens, image_ids)`` -> the () loss."""
        images, mask, tokens = batch[:3]
        image_ids = batch[3] if len(batch) > 3 else None
        logits = self.captioner(images, tokens, mask)  # (B, T, V)
        loss = self.captioner.loss(logits, tokens)
        if check_finite_loss(loss, mode=self.hparams.nonfinite, step=self.global_step, epoch=self.current_epoch,
                             batch_idx=batch_idx,
                             image_ids=None if image_ids is None else lambda: [int(i) for i in image_ids]):
            self._skip_update = True
            self._skipped_steps += 1
            self.log("train/skipped_steps", float(self._skipped_steps), on_step=True, on_epoch=False, batch_size=1)
            return zero_loss_like(self, loss)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=images.shape[0])
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        if self._skip_update:  # a skipped step: drop its (zero) gradients, so AdamW leaves weights and moments alone
            self._skip_update = False
            for p in self.parameters():
                p.grad = None

    # ---------------------------------------------------------------------------------------- validation
    def generate(self, images: Tensor, mask: Tensor | None = None) -> list[str]:
        """Caption a batch with the validation decoding settings: (B, 3, H, W) -> B strings."""
        if self.tokenizer is None:
            raise RuntimeError("CaptionModule has no tokenizer: train it through the CLI or load a checkpoint")
        hp = self.hparams
        method = "greedy" if hp.val_beams == 1 else "beam"
        ids, _ = self.captioner.generate(images, mask, method=method, num_beams=hp.val_beams,
                                         length_penalty=hp.val_length_penalty, max_length=hp.val_max_length)
        return self.tokenizer.decode_batch(ids.cpu())

    def on_validation_epoch_start(self) -> None:
        self._val_entries = []

    def validation_step(self, batch: tuple[Tensor, Tensor, list[list[str]], list[int]], batch_idx: int) -> None:
        images, mask, references, image_ids = batch
        captions = self.generate(images, mask)
        self._val_entries += [(int(i), c, list(r)) for i, c, r in zip(image_ids, captions, references, strict=True)]

    def _gather_entries(self) -> list[tuple[int, str, list[str]]]:
        """Every rank's (image id, caption, references), one per image (a collective call under DDP)."""
        entries = self._val_entries
        if _world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, entries)
            entries = [e for rank in gathered for e in rank]
        unique: dict[int, tuple[int, str, list[str]]] = {}
        for e in entries:  # DistributedSampler repeats images to even out the ranks: keep the first copy
            unique.setdefault(e[0], e)
        return [unique[i] for i in sorted(unique)]

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
        run = self._run_folder()
        if self.trainer.is_global_zero:
            if run is not None:
                self._write_captions(run / "val_captions.json", entries)
            line = "  ".join(f"{k} {metrics[k]:.4f}" for k in _PRINTED_METRICS if k in metrics)
            self.print(f"epoch {self.current_epoch} val ({len(entries)} images): {line}")
            for i, c, r in entries[: self.hparams.num_samples]:
                self.print(f"  image {i}: {c!r}  (reference: {r[0]!r})")

    @staticmethod
    def _write_captions(path: Path, entries: list[tuple[int, str, list[str]]]) -> None:
        """The latest validation captions as COCO caption results (``image_id``, ``caption``)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([{"image_id": i, "caption": c} for i, c, _ in entries], indent=0))

    # ----------------------------------------------------------------------------------------- optimiser
    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if not clip_fused_gradients(self, self.trainer, optimizer, gradient_clip_val, gradient_clip_algorithm):
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        hp = self.hparams
        groups = adamw_param_groups(self.captioner, hp.lr, hp.weight_decay, "encoder.", hp.encoder_lr_mult)
        opt = adamw(groups, lr=hp.lr, weight_decay=hp.weight_decay, fused=not uses_grad_scaler(self.trainer))
        sched = warmup_schedule(opt, int(self.trainer.estimated_stepping_batches), hp.warmup_steps, hp.min_lr_ratio)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
