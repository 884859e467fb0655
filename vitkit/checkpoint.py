"""Checkpoint files read and written safely, without Lightning: every vitkit entry point goes through here.

- :func:`safe_load_checkpoint`: ``torch.load(weights_only=True)``; a file that needs arbitrary pickled objects (the way
  a malicious checkpoint runs code) is refused before anything in it is built, with a message that says so.
- :func:`atomic_torch_save`: write to a hidden temporary file in the same folder, flush it to disk, then
  ``os.replace`` it over the target, so a kill mid-write leaves the previous file intact.
"""

from __future__ import annotations

import os
import pickle
import re
import secrets
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint file that is refused (it would unpickle code) or cannot be read; the message says which."""


def _unsupported_global(err: BaseException) -> str | None:
    """The global a weights-only unpickler refused (``builtins.open``, ``os.system``...), from torch's message."""
    match = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(err))
    return match.group(1) if match else None


def safe_load_checkpoint(path: str | Path, map_location: str | torch.device | None = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with errors a user can act on.

    Every checkpoint vitkit reads goes through here (``vitkit.load``, ``tools/eval.py --ckpt``, ``tools/caption.py``,
    ``tools/train.py --ckpt_path`` via :class:`vitkit.train.checkpoint_io.SafeCheckpointIO`): tensors, plain
    containers and numbers load; a pickled object of any other class (the way a malicious file runs code) is refused
    before it is built, so its code never runs.

    Args:
        path: the checkpoint file.
        map_location: device to load tensors onto (None: where they were saved).

    Returns:
        What the file holds (a Lightning checkpoint is a dict).

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file needs arbitrary pickled objects (refused), or is not a readable torch file
            (truncated, corrupt or another format).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        culprit = _unsupported_global(err)
        what = f" (it references {culprit})" if culprit else ""
        raise CheckpointError(
            f"{path}: refused: cannot be loaded safely, the file needs arbitrary pickled objects{what}, which could "
            "run code. vitkit only loads checkpoints with torch.load(weights_only=True) (tensors, numbers, strings and "
            "plain containers). Use a checkpoint written by tools/train.py; weights you trust from elsewhere can be "
            "re-saved as a plain state_dict or safetensors.") from None
    except Exception as err:  # any other failure means the bytes are not a (whole) torch checkpoint
        raise CheckpointError(f"{path}: cannot be loaded safely as a checkpoint: not a readable torch file "
                              f"({type(err).__name__}: {str(err)[:200]}); it may be truncated (an interrupted copy) "
                              "or another format") from None


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` that never leaves ``path`` half-written.

    Args:
        obj: what to save.
        path: a local file path; its folder is created if needed.
    """
    path = Path(str(path).removeprefix("file://"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for a plain open()
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable (best effort: not every filesystem allows opening a folder)
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


