"""Shared fixtures for the vitkit unit tests (tiny models, CPU, fp32)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def seed() -> int:
    """Seed torch before every test so random weights and inputs are reproducible."""
    torch.manual_seed(0)
    return 0


def _perturb(module: nn.Module, std: float = 0.02) -> nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * std)
    return module


@pytest.fixture
def perturb() -> Callable[..., nn.Module]:
    """In-place Gaussian noise on every parameter, so zero/one inits (biases, norms, class tokens)
    become non-trivial and weight-copy mistakes show up. ``perturb(module, std=0.02) -> module``."""
    return _perturb
