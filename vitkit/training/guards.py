"""Errors a user can act on (:class:`ConfigError`), and the non-finite loss guard shared by the training modules
(:func:`check_finite_loss`)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from vitkit.utils.distributed import all_gather_objects, is_distributed, rank

NONFINITE_MODES = ("raise", "skip")


class ConfigError(ValueError):
    """A config, data or checkpoint mismatch the user fixes in the config; the message names the key and the fix."""


class NonFiniteLossError(FloatingPointError):
    """The training loss is NaN or infinite; the message names the step and the batch's images."""


def check_nonfinite_mode(mode: str) -> None:
    """Raise a :class:`ConfigError` naming ``model.nonfinite`` unless ``mode`` is one of :data:`NONFINITE_MODES`."""
    if mode not in NONFINITE_MODES:
        raise ConfigError(f"model.nonfinite must be 'raise' (stop training) or 'skip' (drop the step), got {mode!r}")


def check_finite_loss(loss: Tensor, *, mode: str, step: int, epoch: int, batch_idx: int,
                      image_ids: Sequence[Any] | Callable[[], Sequence[Any]] | None) -> bool:
    """Decide what to do with this step's loss.

    A collective call under ``torch.distributed`` with several ranks: every rank must call it once per training step.

    Args:
        loss: this rank's () training loss.
        mode: "raise" or "skip".
        step, epoch, batch_idx: the optimizer step, epoch and batch index, for the message.
        image_ids: the batch's image ids (or a callable returning them, called only for a non-finite loss), or None.

    Returns:
        True when the step must be skipped (every rank gets the same answer), False when all losses are finite.

    Raises:
        NonFiniteLossError: in "raise" mode when the loss of any rank is not finite; the message names the step and
            the image ids of every rank whose loss was not finite."""
    bad = ~torch.isfinite(loss.detach())

    def ids() -> list[Any] | None:
        found = image_ids() if callable(image_ids) else image_ids
        return None if found is None else list(found)

    if is_distributed():
        flag = bad.to(torch.float32).reshape(1)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if not bool(flag.item()):
            return False
        mine = (rank(), float(loss.detach().float()), ids() if bool(bad) else None, bool(bad))
        culprits = [(r, value, rank_ids) for r, value, rank_ids, is_bad in all_gather_objects(mine) if is_bad]
    else:
        if not bool(bad):
            return False
        culprits = [(None, float(loss.detach().float()), ids())]
    where = "; ".join(
        (f"rank {r}: " if r is not None else "") + f"loss {value}, "
        + (f"image ids {rank_ids}" if rank_ids is not None else "image ids not carried by this batch")
        for r, value, rank_ids in culprits
    )
    message = f"non-finite loss at step {step} (epoch {epoch}, batch {batch_idx}): {where}"
    if mode == "raise":
        raise NonFiniteLossError(
            f"{message}. Training stopped. Check these images' annotations; lower model.lr or set "
            "trainer.gradient_clip_val if it diverged; model.nonfinite=skip skips such steps instead.")
    if rank() == 0:  # the message is the same on every rank
        warnings.warn(f"{message}; step skipped (model.nonfinite=skip): no weight or optimizer-state update",
                      RuntimeWarning, stacklevel=2)
    return True


def zero_loss_like(module: torch.nn.Module, loss: Tensor) -> Tensor:
    """A () zero loss that reaches every trainable parameter of ``module`` (finite zero gradients): a skipped
    step's loss."""
    total = loss.detach().new_zeros((), dtype=torch.float32)
    for p in module.parameters():
        if p.requires_grad:
            total = total + p.sum().float() * 0.0
    return total
