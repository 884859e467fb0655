"""TaskModule: the Lightning code every task module shares (non-finite guard, AdamW and schedule, fused clipping)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor

from vitkit.training.guards import check_finite_loss, check_nonfinite_mode, zero_loss_like
from vitkit.training.optim import adamw, clip_fused_gradients, uses_grad_scaler, warmup_schedule

_SCHEDULE_KEYS = ("schedule", "lr_drop")  # optional hyper-parameters passed on to warmup_schedule


class TaskModule(L.LightningModule):
    """Base Lightning module of the tasks: non-finite guard, optimiser and schedule, clipping.

    A subclass calls ``super().__init__(nonfinite)`` first, then ``self.save_hyperparameters(...)``, implements
    :meth:`param_groups` and passes its training loss through :meth:`skip_nonfinite`. Reads the hyper-parameters
    ``nonfinite``, ``lr``, ``weight_decay``, ``warmup_steps``, ``min_lr_ratio`` and, if present, ``schedule`` /
    ``lr_drop``.

    Args:
        nonfinite: "raise" or "skip" (a :class:`~vitkit.training.guards.ConfigError` otherwise)."""
    total_steps: int | None = None  # optimizer steps the lr schedule spans (set by configure_optimizers)

    def __init__(self, nonfinite: str = "raise") -> None:
        super().__init__()
        check_nonfinite_mode(nonfinite)
        self._skip_update = False  # set by a skipped (non-finite) step, cleared before the optimizer step
        self._skipped_steps = 0

    # ------------------------------------------------------------------------------------------ non-finite
    def skip_nonfinite(self, loss: Tensor, batch_idx: int,
                       image_ids: Sequence[Any] | Callable[[], Sequence[Any]] | None = None) -> Tensor | None:
        """Guard this step's training loss; a collective call under DDP (every rank, once per training step).

        Args:
            loss: this rank's () training loss.
            image_ids: the batch's image ids (or a callable returning them), or None.

        Returns:
            None when every rank's loss is finite. Otherwise (``nonfinite="skip"``) the () zero loss to return instead;
            the step then changes no weight and no optimizer state, and ``train/skipped_steps`` is logged.

        Raises:
            NonFiniteLossError: with ``nonfinite="raise"``, when the loss of any rank is not finite."""
        if not check_finite_loss(loss, mode=self.hparams.nonfinite, step=self.global_step, epoch=self.current_epoch,
                                 batch_idx=batch_idx, image_ids=image_ids):
            return None
        self._skip_update = True
        self._skipped_steps += 1
        self.log("train/skipped_steps", float(self._skipped_steps), on_step=True, on_epoch=False, batch_size=1)
        return zero_loss_like(self, loss)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._skip_update:  # a skipped step: drop its (zero) gradients, so AdamW leaves weights and moments alone
            self._skip_update = False
            for p in self.parameters():
                p.grad = None

    @property
    def scheduled(self) -> bool:
        """Whether this module is in a fit whose lr schedule is sized (:meth:`configure_optimizers` has run)."""
        return self._trainer is not None and self.total_steps is not None

    def reached(self, share: float | None) -> bool:
        """Whether this step is at or past ``share`` (in [0, 1]) of the lr schedule's steps; False for None or
        unscheduled."""
        if share is None or not self.scheduled:
            return False
        return self.global_step >= round(share * self.total_steps)

    # ------------------------------------------------------------------------------------------- optimiser
    def param_groups(self) -> list[dict]:
        """The AdamW parameter groups of the task's model (see :func:`vitkit.training.optim.adamw_param_groups`)."""
        raise NotImplementedError(f"{type(self).__name__} must define param_groups()")

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        if not clip_fused_gradients(self, self.trainer, optimizer, gradient_clip_val, gradient_clip_algorithm):
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        opt = adamw(self.param_groups(), lr=hp.lr, weight_decay=hp.weight_decay,
                    fused=not uses_grad_scaler(self.trainer))
        options = {k: hp[k] for k in _SCHEDULE_KEYS if k in hp}
        self.total_steps = int(self.trainer.estimated_stepping_batches)
        sched = warmup_schedule(opt, self.total_steps, hp.warmup_steps, hp.min_lr_ratio, **options)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
