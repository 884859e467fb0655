"""SafeCheckpointIO: Lightning checkpoint I/O that writes atomically and reads with ``weights_only=True`` only."""

from __future__ import annotations

import os
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.plugins.io.wrapper import _WrappingCheckpointIO

from vitkit.utils.checkpoints import atomic_torch_save, safe_load_checkpoint


def _is_local(path: str | os.PathLike) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


class SafeCheckpointIO(TorchCheckpointIO):
    """Atomic local saves and weights-only loads (:func:`~vitkit.utils.checkpoints.safe_load_checkpoint`).

    Remote paths (``s3://`` ...) are saved by Lightning's own writer. A kill mid-write leaves a stray
    ``.<name>.<random>.tmp`` and the previous checkpoint intact."""
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        del weights_only  # always True: a checkpoint never runs code here
        return safe_load_checkpoint(path, map_location if map_location is not None else "cpu")


def install_safe_checkpoint_io(trainer) -> None:
    """Give ``trainer``'s strategy a :class:`SafeCheckpointIO` in place of Lightning's default ``TorchCheckpointIO``
    (also inside a wrapper such as ``AsyncCheckpointIO``); a checkpoint I/O of another kind is left alone."""

    strategy = trainer.strategy
    current = getattr(strategy, "_checkpoint_io", None)
    if current is None or type(current) is TorchCheckpointIO:
        strategy.checkpoint_io = SafeCheckpointIO()
    elif isinstance(current, _WrappingCheckpointIO):
        inner = current.checkpoint_io
        if inner is None:
            current.checkpoint_io = SafeCheckpointIO()
        elif type(inner) is TorchCheckpointIO:
            current._checkpoint_io = SafeCheckpointIO()
