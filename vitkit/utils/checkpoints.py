"""Checkpoint files read and written safely, without Lightning: weights-only loading (:func:`safe_load_checkpoint`),
atomic saving (:func:`atomic_torch_save`) and checks of stored model configs (:func:`check_stored_config`)."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
import yaml

from vitkit.utils.files import atomic_write


class CheckpointError(ValueError):
    """A checkpoint file that is refused (it would unpickle code) or cannot be read; the message says which."""


def _unsupported_global(err: BaseException) -> str | None:
    """The global a weights-only unpickler refused (``builtins.open``, ``os.system``...), from torch's message."""
    match = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(err))
    return match.group(1) if match else None


def safe_load_checkpoint(path: str | Path, map_location: str | torch.device | None = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with errors a user can act on.

    Args:
        map_location: device to load tensors onto (None: where they were saved).

    Returns:
        What the file holds (a Lightning checkpoint is a dict).

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file needs arbitrary pickled objects (refused before they are built), or is not a
            readable torch file (truncated, corrupt or another format)."""
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
    """``torch.save(obj, path)`` that never leaves ``path`` half-written (and is on disk when it returns).

    ``path``: a local file path (a ``file://`` prefix is dropped); its folder is created if needed."""
    atomic_write(str(path).removeprefix("file://"), lambda f: torch.save(obj, f), durable=True)


ALLOWED_CONFIG_MODULES = ("vitkit", "torch.nn", "timm")
"""Packages whose classes (and functions) a config read from a file may name."""

_IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")
_OFFLINE = {"pretrained": False, "pretrained_file": None}  # the checkpoint holds the weights: no download, no file


def _allowed_module(name: Any) -> bool:
    return isinstance(name, str) and any(name == m or name.startswith(m + ".") for m in ALLOWED_CONFIG_MODULES)


def _importable(top: str) -> bool:
    """Whether ``top`` is a top-level module Python could import (found without importing it); a file name such as
    ``weights.safetensors`` or a timm model tag such as ``vit_small_patch16_224.augreg_in21k`` is not."""
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):  # e.g. __main__ without a spec: treat as importable, so it gets checked
        return True


def _resolve(path: str) -> Any:
    """The object ``path`` names, looked up as jsonargparse does (a module, then attributes); only called for paths
    under :data:`ALLOWED_CONFIG_MODULES`, so only those packages are imported."""
    module, _, name = path.rpartition(".")
    try:
        parent = importlib.import_module(module)
    except ModuleNotFoundError:
        module, _, attr = module.rpartition(".")
        parent = getattr(importlib.import_module(module), attr)
    return getattr(parent, name)


def _check_reference(path: Any, key: str, source: str, what: str) -> None:
    """Refuse (CheckpointError) a class path / class reference that does not name a class or function defined under
    :data:`ALLOWED_CONFIG_MODULES` (also one reached through a re-export, such as ``vitkit.some_module.os.system``)."""
    fix = ("Fix: use a checkpoint written by tools/train.py, or build the model in Python and load the weights with "
           "load_state_dict")
    allowed = "vitkit, torch.nn or timm"
    if not isinstance(path, str) or not _IMPORT_PATH.fullmatch(path) or not _allowed_module(path):
        raise CheckpointError(f"{source}: refused: config key '{key}' names the {what} {path!r}; a config read from a "
                              f"file may only name classes under {allowed} (building anything else could run code). "
                              f"{fix}")
    try:
        obj = _resolve(path)
    except (ImportError, AttributeError) as err:
        raise CheckpointError(f"{source}: config key '{key}' names the {what} {path!r}, which cannot be imported "
                              f"({type(err).__name__}: {err}). {fix}") from None
    defined_in = getattr(obj, "__module__", None) if inspect.isclass(obj) or inspect.isroutine(obj) \
        else type(obj).__module__
    if inspect.ismodule(obj) or not _allowed_module(defined_in):
        raise CheckpointError(f"{source}: refused: config key '{key}' names the {what} {path!r}, which is "
                              f"{'a module' if inspect.ismodule(obj) else f'defined in {defined_in!r}'}; a config "
                              f"read from a file may only name classes defined under {allowed} (building anything "
                              f"else could run code). {fix}")


def check_stored_config(config: Any, source: str) -> Any:
    """A model config read from a file, checked before jsonargparse builds it, with ``pretrained`` turned off.

    Every ``class_path`` (at any depth) and every string that is an importable import path must name a class or
    function defined under ``vitkit``, ``torch.nn`` or ``timm``. ``pretrained`` becomes false, ``pretrained_file`` null.

    Args:
        config: the ``{"class_path": ..., "init_args": {...}}`` dict as stored.
        source: the file and key, for the message (e.g. ``"last.ckpt: 'vitkit_spec'"``).

    Returns:
        A checked copy (the input is not modified).

    Raises:
        CheckpointError: naming ``source``, the config key and the class."""
    def walk(value: Any, key: str) -> Any:
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                sub = f"{key}.{k}" if key else str(k)
                if k == "class_path":
                    _check_reference(v, sub, source, "class")
                    out[k] = v
                elif k in _OFFLINE:
                    out[k] = _OFFLINE[k]
                else:
                    out[k] = walk(v, sub)
            return out
        if isinstance(value, list | tuple):
            return [walk(v, f"{key}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, str):
            if "class_path" in value:  # jsonargparse parses a string as YAML where a class is expected
                try:
                    parsed = yaml.safe_load(value)
                except yaml.YAMLError:
                    parsed = None
                if not isinstance(parsed, dict | list):
                    raise CheckpointError(f"{source}: refused: config key '{key}' holds a string with a "
                                          f"'class_path' that cannot be checked: {value[:200]!r}")
                walk(parsed, key)
            elif _IMPORT_PATH.fullmatch(value) and _importable(value.split(".", 1)[0]):
                _check_reference(value, key, source, "class reference")
        return value

    return walk(config, "")
