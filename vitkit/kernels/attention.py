"""Attention kernels for CPU inference: one query per head (a decoding step) and bf16 self/cross-attention, each as
two matmuls and a softmax where SDPA's CPU kernels are slower. :class:`vitkit.layers.MultiheadAttention` picks them."""

from __future__ import annotations

import torch
from torch import Tensor

from vitkit.kernels.packed import standard_ops_only


def single_query_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """Attention for one query per head, as two matmuls and a float32 softmax; equals SDPA up to bf16 rounding.

    q is (B, H, 1, hd), k and v (B, H, Tk, hd); ``mask`` follows SDPA, broadcastable to (B, H, 1, Tk) (bool
    True = attend, or float additive) or None. Returns (B, H, 1, hd).
    """
    scores = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5  # (B, H, 1, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
    return scores.softmax(-1).to(v.dtype) @ v


# Largest score matrix (B * H * Tq * Tk elements, 32 MB in bf16) the bf16 matmul path materialises; past it, SDPA runs.
MATMUL_ATTENTION_MAX_SCORES = 1 << 24


def bf16_matmul_path(q: Tensor, k: Tensor, causal: bool) -> bool:
    """True where :func:`bf16_matmul_attention` serves q (B, H, Tq, hd) and k (B, H, Tk, hd)."""
    return (q.dtype == torch.bfloat16 and q.device.type == "cpu" and not torch.is_grad_enabled() and not causal
            and q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] <= MATMUL_ATTENTION_MAX_SCORES
            and not standard_ops_only())


def bf16_matmul_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """bf16 inference attention on the CPU as two bf16 matmuls and a softmax (float accumulation, bf16 output).

    Scores are rounded to bf16 (max abs error ~0.011 on unit inputs). For use without autograd and for score
    matrices up to :data:`MATMUL_ATTENTION_MAX_SCORES` elements. q is (B, H, Tq, hd), k and v (B, H, Tk, hd),
    bf16; ``mask`` follows SDPA, broadcastable to (B, H, Tq, Tk) (bool True = attend, or float additive) or
    None. Returns (B, H, Tq, hd).
    """
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)  # (B, H, Tq, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.to(q.dtype)
    return scores.softmax(-1) @ v
