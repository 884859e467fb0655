"""Shared fixtures for the vitkit unit tests (tiny models, CPU, fp32)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

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


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Run a module's tests on one torch thread (data transforms run in one-thread DataLoader workers; on a small
    shared CPU, tiny elementwise ops with several OpenMP threads are ~100x slower). Restores the setting after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
