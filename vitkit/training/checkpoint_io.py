"""SafeCheckpointIO: Lightning checkpoint I/O that writes atomically and reads with ``weights_only=True`` only.

Lightning's ``TorchCheckpointIO`` writes through fsspec, which (on a local disk) truncates the target or copies a
temporary file over it: a kill during the write leaves a broken ``last.ckpt`` and nothing to resume from. Here the
checkpoint goes to a hidden temporary file in the same folder, is flushed to disk, then ``os.replace``d over the
target, so the target is at every moment either the previous checkpoint or the new one. A kill mid-write leaves a
stray ``.<name>.<random>.tmp`` (never matched by ``--ckpt_path last``) and the previous checkpoint intact.

Reading ignores the ``weights_only`` Lightning asks for and always goes through
:func:`vitkit.utils.checkpoints.safe_load_checkpoint`, so
``--ckpt_path`` (resume) and ``tools/eval.py --ckpt`` (validate)
refuse a file that would unpickle code, with the same message as :func:`vitkit.load`.
"""

from __future__ import annotations

import os
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.plugins.io.wrapper import _WrappingCheckpointIO

from vitkit.utils.checkpoints import atomic_torch_save, safe_load_checkpoint


def _is_local(path: str | os.PathLike) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


class SafeCheckpointIO(TorchCheckpointIO):
    """Atomic local saves (:func:`~vitkit.utils.checkpoints.atomic_torch_save`) and weights-only loads
    (:func:`~vitkit.utils.checkpoints.safe_load_checkpoint`).

    Remote paths (``s3://`` ...) are saved by Lightning's own writer.
    """
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
