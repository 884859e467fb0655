"""Iterative box refinement as a decoder hook (DAB-DETR anchors, Deformable DETR refinement).

:class:`BoxRefinement` owns ``ref_point_head`` and per-layer ``bbox_embed.{i}``; its :class:`RefinementHook` gives
each layer query positions from the current boxes and refines them as ``sigmoid(logit(box) + head(out))``,
detached between layers.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn

from vitkit.core.decoder import TransformerDecoder
from vitkit.detection.heads import MLP, inverse_sigmoid, zero_last_layer
from vitkit.layers.deformable import MSDeformableAttention, valid_ratios


def box_sine_embed(boxes: Tensor, dim: int) -> Tensor:
    """(B, Q, 4) cxcywh in [0, 1] -> (B, Q, dim) sine embedding, dim/4 channels per coordinate in (y, x, w, h)
    order, with :class:`SinePositionEncoding2D`'s scale (2*pi) and frequencies."""
    n = dim // 4
    i = torch.arange(n, dtype=torch.float32, device=boxes.device)
    dim_t = 10000.0 ** (2 * torch.div(i, 2, rounding_mode="floor") / n)  # (n,)
    coords = boxes.float()[..., [1, 0, 2, 3]] * 2 * math.pi  # (B, Q, 4)
    pos = coords[..., None] / dim_t  # (B, Q, 4, n)
    pos = torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)  # (B, Q, 4, n)
    return pos.flatten(-2)  # (B, Q, 4n)


def check_cross_attn(cross_attn: str, box_refine: bool) -> None:
    """The rules of the ``cross_attn`` switch: global or deformable, and deformable samples around boxes."""
    if cross_attn not in ("global", "deformable"):
        raise ValueError(f"cross_attn must be global|deformable, got {cross_attn!r}")
    if cross_attn == "deformable" and not box_refine:
        raise ValueError("cross_attn='deformable' needs box_refine=True (points are sampled around each "
                         "query's reference box)")


def use_deformable_cross_attention(decoder: TransformerDecoder, num_levels: int, num_points: int) -> None:
    """Replace every decoder layer's cross-attention by multi-scale deformable attention (same name), in place."""
    for layer in decoder.layers:
        layer.cross_attn = MSDeformableAttention(decoder.dim, decoder.num_heads, num_levels, num_points)


class RefinementHook:
    """One forward's refinement state, called by :meth:`TransformerDecoder.forward` around each layer.

    Args:
        boxes: (B, Q, 4) initial anchors, cxcywh in [0, 1].
        dtype: dtype of the query positions (the memory's).
        deform_ctx: levels' ``shapes`` and ``ratios`` for deformable cross-attention, else None.
    """
    def __init__(self, refine: BoxRefinement, class_embed: nn.Module, boxes: Tensor, dtype: torch.dtype,
                 deform_ctx: dict[str, Any] | None = None) -> None:
        self.refine, self.class_embed, self.dtype, self.deform_ctx = refine, class_embed, dtype, deform_ctx
        self.ref = boxes  # the current layer's reference boxes (B, Q, 4)
        self.logits: list[Tensor] = []
        self.boxes: list[Tensor] = []

    def before_layer(self, index: int, x: Tensor) -> dict[str, Any]:
        """Query positions (B, Q, D) and, for deformable cross-attention, its sampling context."""
        ref = self.ref
        query_pos = self.refine.ref_point_head(box_sine_embed(ref, self.refine.dim).to(self.dtype))  # (B, Q, D)
        kw = None if self.deform_ctx is None else {**self.deform_ctx, "reference": ref}
        return {"query_pos": query_pos, "cross_attn_kwargs": kw}

    def after_layer(self, index: int, out: Tensor) -> None:
        """Predict from the layer's normalised output (B, Q, D); the refined boxes, detached, are the next refs."""
        new = (inverse_sigmoid(self.ref) + self.refine.bbox_embed[index](out).float()).sigmoid()  # (B, Q, 4)
        self.logits.append(self.class_embed(out))
        self.boxes.append(new)
        self.ref = new.detach()

    def predictions(self) -> tuple[Tensor, Tensor]:
        """Every layer's class logits (L, B, Q, C') and boxes (L, B, Q, 4)."""
        return torch.stack(self.logits), torch.stack(self.boxes)


class BoxRefinement(nn.Module):
    """Per-layer box refinement from anchor boxes: ``ref_point_head`` and ``bbox_embed`` (``head`` copied once per
    decoder layer, ``depth`` = L)."""
    def __init__(self, dim: int, depth: int, head: MLP) -> None:
        super().__init__()
        self.dim = dim
        self.ref_point_head = MLP(dim, dim, dim, 2)
        # Deformable DETR: one box head per layer when refining.
        self.bbox_embed = nn.ModuleList(copy.deepcopy(head) for _ in range(depth))

    def reset_parameters(self) -> None:
        """Zero box heads: each layer starts by keeping its reference boxes."""
        for head in self.bbox_embed:
            zero_last_layer(head)

    def hook(self, class_embed: nn.Module, boxes: Tensor, dtype: torch.dtype, grid_pad: Tensor | None = None,
             shapes: list[tuple[int, int]] | None = None) -> RefinementHook:
        """A fresh :class:`RefinementHook` for one forward, from (B, Q, 4) initial anchors and the memory's dtype;
        ``grid_pad`` (B, N) (no prefix) and ``shapes`` [(h, w)] for deformable cross-attention, else None."""
        ctx = None
        if shapes is not None:
            ctx = {"shapes": shapes, "ratios": valid_ratios(grid_pad, shapes)}
        return RefinementHook(self, class_embed, boxes, dtype, ctx)
