"""vitkit: a vision-transformer toolkit (ViT encoders, DETR-style detection, captioning) on PyTorch.

Public names load on first use (PEP 562): ``import vitkit`` imports no torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from vitkit.version import __version__

if TYPE_CHECKING:
    from vitkit.io.load import load

# public name -> the module that defines it, imported on first access
_LAZY = {"load": "vitkit.io.load"}

__all__ = ["__version__", "load"]


def __getattr__(name: str) -> Any:
    """``vitkit.load`` and the other lazy names: import their module once, then cache the name here."""
    if name not in _LAZY:
        raise AttributeError(f"module 'vitkit' has no attribute '{name}'")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
