"""Attention kernels for CPU inference: one query per head (a decoding step) and bf16 self/cross-attention, each as
two matmuls and a softmax where SDPA's CPU kernels are slower. :class:`vitkit.layers.MultiheadAttention` picks them."""

from __future__ import annotations

import torch
from torch import Tensor

from vitkit.kernels.packed import standard_ops_only


def single_query_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """Attention for one query per head, as two matmuls and a float32 softmax.

    On the CPU, SDPA's fused kernel spends ~7x longer than this on a bf16 decoding step (16 x 8 heads, one
    query, 196 keys: 2.9 ms vs 0.4 ms; fp32: 0.44 vs 0.40 ms), which made cross-attention dominate caption
    generation. Same result as SDPA up to bf16 rounding.

    Args:
        q: (B, H, 1, hd); k, v: (B, H, Tk, hd).
        mask: SDPA's convention, broadcastable to (B, H, 1, Tk): bool True = attend, or float additive; or None.

    Returns:
        (B, H, 1, hd).
    """
    scores = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5  # (B, H, 1, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
    return scores.softmax(-1).to(v.dtype) @ v


# Largest score matrix (B * H * Tq * Tk elements, 32 MB in bf16) the bf16 matmul path materialises; past it, SDPA's
# flash kernel (which never holds the whole matrix) runs, so a 2048 px ViT-B/16 keeps its small peak memory.
MATMUL_ATTENTION_MAX_SCORES = 1 << 24


def bf16_matmul_path(q: Tensor, k: Tensor, causal: bool) -> bool:
    """True where :func:`bf16_matmul_attention` serves q (B, H, Tq, hd) and k (B, H, Tk, hd)."""
    return (q.dtype == torch.bfloat16 and q.device.type == "cpu" and not torch.is_grad_enabled() and not causal
            and q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] <= MATMUL_ATTENTION_MAX_SCORES
            and not standard_ops_only())


def bf16_matmul_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """bf16 inference attention on the CPU as two bf16 matmuls and a softmax (float accumulation, bf16 output).

    SDPA's CPU flash kernel runs a ViT's 197-token self-attention at ~100 GFLOP/s; this runs it in about half the
    time (8 x 12 heads x 197 tokens: 8.6 -> 5.0 ms; 16 x 6 x 196: 9.2 -> 4.8 ms). The scores are rounded to bf16,
    so the attention output moves ~4x more than SDPA's from an fp32 reference (max 0.011 vs 0.0024 on unit
    inputs), still below the bf16 rounding of the projections around it; bf16 inference keeps COCO AP within 0.5
    points of fp32 with it (tests/kernels/test_precision.py). Only used without autograd and for score matrices up to
    :data:`MATMUL_ATTENTION_MAX_SCORES` elements.

    Args:
        q: (B, H, Tq, hd); k, v: (B, H, Tk, hd), bf16.
        mask: SDPA's convention, broadcastable to (B, H, Tq, Tk): bool True = attend, or float additive; or None.

    Returns:
        (B, H, Tq, hd).
    """
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)  # (B, H, Tq, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.to(q.dtype)
    return scores.softmax(-1) @ v
