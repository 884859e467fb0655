"""The devices a device-parametrised test runs on: the CPU always, cuda where it is available.

``@on_devices`` parametrises a test over ``device`` and marks it ``device``, so the cuda subset is
``pytest -m device -k cuda`` (what ``benchmarks/gpu_check.py`` runs on a GPU). Without cuda a test gets one
``[cpu]`` case, so the CPU suite runs exactly what it ran before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pytest
import torch

DEVICES: list[str] = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

F = TypeVar("F", bound=Callable)


def on_devices(fn: F) -> F:
    """Parametrise ``fn`` over :data:`DEVICES` (argument ``device``) and mark it ``device``."""
    return pytest.mark.device(pytest.mark.parametrize("device", DEVICES)(fn))
