"""Inference precision (bf16 where the hardware runs it fast, else fp32) and the training precision for a CPU
(:func:`training_precision`). Inference wrappers cast inputs to the model's dtype and outputs back to float32.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from vitkit.kernels.fuse import fold_frozen_batchnorm
from vitkit.kernels.packed import pack_linears

PRECISIONS = ("auto", "bf16", "fp32")


def bf16_is_fast(device: str | torch.device = "cpu") -> bool:
    """True where bf16 matmuls run natively: CUDA with bf16 support, or a CPU with AVX-512 bf16 / AMX."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


CPU_BF16_ENV = "VITKIT_CPU_BF16"  # "1": keep a bf16 training precision on a CPU without native bf16


def training_precision(precision: Any, accelerator: Any) -> tuple[Any, str | None]:
    """The Lightning ``trainer.precision`` to train with, and a warning when it differs from ``precision``.

    A bf16 precision ("bf16-mixed", "bf16-true", "bf16") on a CPU without native bf16 (no AVX-512 bf16 / AMX)
    becomes "32-true" unless ``VITKIT_CPU_BF16=1``. Any other precision or accelerator is returned unchanged.
    """
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if not (on_cpu and isinstance(precision, str) and precision.startswith("bf16")):
        return precision, None
    if bf16_is_fast("cpu") or os.environ.get(CPU_BF16_ENV) == "1":
        return precision, None
    return "32-true", (f"trainer.precision: {precision} would run emulated on this CPU (no AVX-512 bf16 / AMX), "
                       f"about 30x slower than fp32; training with 32-true instead (set {CPU_BF16_ENV}=1 to keep "
                       f"{precision})")


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """``auto`` -> ``bf16`` where :func:`bf16_is_fast`, else ``fp32``; checks the name."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {'|'.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if bf16_is_fast(device) else "fp32"
    return precision


def apply_precision(model: nn.Module, precision: str) -> torch.dtype:
    """Prepare ``model`` (in place, for inference only) for ``precision``; returns its new floating dtype.

    ``bf16``: eval mode, frozen BatchNorms folded into their convs, weights cast to bfloat16, conv weights in
    channels_last. ``fp32``: weights cast to float32. Both, on the CPU: linear weights prepacked for oneDNN.
    """
    precision = resolve_precision(precision, next(model.parameters()).device)
    model.eval()
    on_cpu = next(model.parameters()).device.type == "cpu"
    if precision == "fp32":
        model.float()
        if on_cpu:
            pack_linears(model)
        return torch.float32
    if model_dtype(model) == torch.float32:
        fold_frozen_batchnorm(model)
    model.to(torch.bfloat16)
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model.to(memory_format=torch.channels_last)
    if on_cpu:
        pack_linears(model)
    return torch.bfloat16


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter."""
    return next(p.dtype for p in model.parameters() if p.is_floating_point())
