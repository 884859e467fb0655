"""training_precision: a bf16 trainer precision is kept off CPUs that would emulate bf16, and only there."""

from __future__ import annotations

import pytest
import torch

from vitkit.kernels import precision as precision_mod
from vitkit.kernels.precision import CPU_BF16_ENV, training_precision


@pytest.fixture
def slow_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision_mod, "bf16_is_fast", lambda device="cpu": False)
    monkeypatch.delenv(CPU_BF16_ENV, raising=False)


@pytest.mark.parametrize("bf16", ["bf16-mixed", "bf16-true", "bf16"])
def test_cpu_without_native_bf16_trains_in_fp32_with_a_warning(slow_bf16, bf16):
    got, note = training_precision(bf16, "cpu")
    assert got == "32-true"
    assert bf16 in note and CPU_BF16_ENV in note and "32-true" in note


def test_auto_accelerator_counts_as_cpu_only_without_cuda(slow_bf16, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert training_precision("bf16-mixed", "auto")[0] == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert training_precision("bf16-mixed", "auto") == ("bf16-mixed", None)


@pytest.mark.parametrize(("precision", "accelerator"), [("32-true", "cpu"), ("16-mixed", "cpu"), ("bf16-mixed", "gpu"),
                                                        ("bf16-mixed", "cuda"), (None, "cpu"), (32, "cpu")])
def test_other_precisions_and_accelerators_are_unchanged(slow_bf16, precision, accelerator):
    assert training_precision(precision, accelerator) == (precision, None)


def test_env_keeps_bf16_and_native_bf16_needs_nothing(slow_bf16, monkeypatch):
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    assert training_precision("bf16-mixed", "cpu") == ("bf16-mixed", None)
    monkeypatch.delenv(CPU_BF16_ENV)
    monkeypatch.setattr(precision_mod, "bf16_is_fast", lambda device="cpu": True)
    assert training_precision("bf16-mixed", "cpu") == ("bf16-mixed", None)
