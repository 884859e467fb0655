"""Shared fixtures for the vitkit unit tests (tiny models, CPU, fp32)."""

from __future__ import annotations

import os
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


# The slow tier: whole modules that train, run a CLI in a subprocess, start DDP processes, score with Java or
# benchmark, plus single tests marked `@pytest.mark.slow` in their files (learning checks, the largest parity cases,
# CLI runs). `pytest -m "not slow"` (the development loop) leaves them out; the full suite (CI) runs everything.
SLOW_MODULES = frozenset({
    "test_benchmark", "test_caption_cli", "test_caption_train", "test_cli_main", "test_detect_cli",
    "test_detr_weights", "test_eval_cli", "test_export", "test_image_path", "test_precision",
    "test_reliability_checkpoints", "test_reliability_config", "test_reliability_ddp", "test_reliability_images",
    "test_reliability_nonfinite", "test_reliability_resume", "test_scst_ddp", "test_train_cli",
})


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``-n 2``, the CI command) each worker runs on one torch thread, so the workers share the
    cores instead of oversubscribing them."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.stem in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
