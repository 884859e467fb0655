"""Multi-scale deformable cross-attention (Deformable DETR) in plain PyTorch over ``F.grid_sample``.

Reference boxes are normalised to each image's unpadded extent; ``valid_ratios`` map them onto the padded grid.
Values over padding or outside the grid are zero. Unlike the reference, the call signature matches
:class:`vitkit.layers.MultiheadAttention`'s (``query, key, value``; ``key`` ignored) plus the sampling context.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def valid_ratios(pad: Tensor, shapes: list[tuple[int, int]]) -> Tensor:
    """Per level, the fraction (B, L, 2) as (x, y) of the grid's columns and rows that hold real tokens.

    Args:
        pad: (B, N) padding mask over the concatenated level grids (True = padding, on the right/bottom).
        shapes: [(h, w)] per level, in memory order.
    """
    out, start = [], 0
    for h, w in shapes:
        grid = pad[:, start:start + h * w].reshape(-1, h, w)
        vw = (~grid[:, 0, :]).sum(1).clamp(min=1).float() / w  # (B,)
        vh = (~grid[:, :, 0]).sum(1).clamp(min=1).float() / h  # (B,)
        out.append(torch.stack((vw, vh), dim=-1))
        start += h * w
    return torch.stack(out, dim=1)  # (B, L, 2)


class MSDeformableAttention(nn.Module):
    """Deformable cross-attention over L = ``num_levels`` memory grids, ``num_points`` P sampling points per head
    and level; ``dim`` D must divide evenly by ``num_heads`` H."""
    def __init__(self, dim: int, num_heads: int, num_levels: int, num_points: int = 4) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.num_levels, self.num_points = dim, num_heads, num_levels, num_points
        self.sampling_offsets = nn.Linear(dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # Deformable DETR's start: head h looks along direction 2*pi*h/H, point p at distance p+1.
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float32) * (2 * math.pi / self.num_heads)
        dirs = torch.stack((angles.cos(), angles.sin()), -1)  # (H, 2)
        dirs = dirs / dirs.abs().amax(-1, keepdim=True)
        grid = dirs[:, None, None, :].repeat(1, self.num_levels, self.num_points, 1)  # (H, L, P, 2)
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32)[None, None, :, None]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def sampling(self, query: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
        """Where and how much each query looks.

        Args:
            query: (B, Q, D); reference: (B, Q, 4) cxcywh boxes, normalised to the unpadded image.

        Returns:
            locations (B, Q, H, L, P, 2) as (x, y) in [0, 1] of the unpadded image, and float32 weights
            (B, Q, H, L, P) summing to 1 over L and P per head.
        """
        B, Q, _ = query.shape
        H, L, P = self.num_heads, self.num_levels, self.num_points
        off = self.sampling_offsets(query).float().view(B, Q, H, L, P, 2)
        weights = self.attention_weights(query).float().view(B, Q, H, L * P).softmax(-1).view(B, Q, H, L, P)
        ref = reference.float()[:, :, None, None, None, :]  # (B, Q, 1, 1, 1, 4)
        return ref[..., :2] + off / P * ref[..., 2:] * 0.5, weights

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        *,
        key_padding_mask: Tensor | None = None,
        reference: Tensor,
        shapes: list[tuple[int, int]],
        ratios: Tensor,
        **unused,
    ) -> Tensor:
        """Attend.

        Args:
            query: (B, Q, D) queries (content + position).
            key: ignored.
            value: (B, N, D) memory, the L grids flattened row-major and concatenated, N = sum(h * w).
            key_padding_mask: (B, N) True = padding.
            reference: (B, Q, 4) cxcywh reference boxes, normalised to each image's unpadded extent.
            shapes: [(h, w)] per level.
            ratios: (B, L, 2) from :func:`valid_ratios`.
            unused: the other cross-attention arguments of :class:`DecoderBlock` (must be None).

        Returns:
            (B, Q, D).
        """
        given = sorted(k for k, v in unused.items() if v is not None)
        if given:
            raise ValueError(f"deformable cross-attention does not take {given}")
        B, Q, _ = query.shape
        H, L, hd = self.num_heads, self.num_levels, self.dim // self.num_heads
        if len(shapes) != L:
            raise ValueError(f"expected {L} memory levels, got {len(shapes)}")
        v = self.value_proj(value)  # (B, N, D)
        if key_padding_mask is not None:
            v = v.masked_fill(key_padding_mask[..., None], 0)
        loc, weights = self.sampling(query, reference)  # (B, Q, H, L, P, 2) in the unpadded frame
        loc = loc * ratios.float()[:, None, None, :, None, :]  # onto the padded grid
        grid = (2 * loc - 1).permute(0, 2, 1, 3, 4, 5).flatten(0, 1)  # (B*H, Q, L, P, 2)
        sampled, start = [], 0
        for lvl, (h, w) in enumerate(shapes):
            v_l = v[:, start:start + h * w].float().view(B, h, w, H, hd).permute(0, 3, 4, 1, 2)  # (B, H, hd, h, w)
            s = F.grid_sample(v_l.flatten(0, 1), grid[:, :, lvl], mode="bilinear", padding_mode="zeros",
                              align_corners=False)  # (B*H, hd, Q, P)
            sampled.append(s)
            start += h * w
        sampled = torch.stack(sampled, dim=3)  # (B*H, hd, Q, L, P)
        w_ = weights.permute(0, 2, 1, 3, 4).flatten(0, 1)[:, None]  # (B*H, 1, Q, L, P)
        out = (sampled * w_).sum((-1, -2))  # (B*H, hd, Q)
        out = out.view(B, H * hd, Q).transpose(1, 2).to(query.dtype)  # (B, Q, D)
        return self.output_proj(out)
