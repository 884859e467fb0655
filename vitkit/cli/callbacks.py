"""The checkpoint callback every ``vitkit train`` run gets (the ``checkpoint`` group of the run config)."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from vitkit.training.guards import ConfigError


class LatestLastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` is refreshed at every save point, also when the metric did not
    improve."""

    def __init__(self, *args: Any, last_every_n_train_steps: int = 0, **kwargs: Any) -> None:
        """Build the callback (``args``, ``kwargs``: ``ModelCheckpoint``'s).

        Args:
            last_every_n_train_steps: also refresh ``last.ckpt`` every this many optimizer steps (0 = only at the
                epoch / validation ends).

        Raises:
            ConfigError: ``last_every_n_train_steps`` is negative."""
        super().__init__(*args, **kwargs)
        if last_every_n_train_steps < 0:
            raise ConfigError(f"checkpoint.last_every_n_train_steps must be >= 0 (0 = off), got "
                              f"{last_every_n_train_steps}")
        self.last_every_n_train_steps = last_every_n_train_steps

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """ModelCheckpoint's step saves, then ``last.ckpt`` every ``last_every_n_train_steps`` optimizer steps."""
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        n = self.last_every_n_train_steps
        if (n and self.save_last and trainer.global_step % n == 0 and not trainer.fit_loop._should_accumulate()
                and not self._should_skip_saving_checkpoint(trainer)):
            # Not counted as this step's save, so a validation at the same step still saves its top-k checkpoint.
            saved_step = self._last_global_step_saved
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            self._last_global_step_saved = saved_step

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """ModelCheckpoint's epoch-end save, then ``last.ckpt`` if it is stale and saving happens at epoch ends."""
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_stale(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """ModelCheckpoint's validation-end save, then ``last.ckpt`` if it is stale and saving follows validation."""
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_stale(trainer)

    def _save_last_if_stale(self, trainer: L.Trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):  # skipped: saved at this step
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
