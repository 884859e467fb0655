"""2D positional encodings (and 1D RoPE) aware of padding masks and of any grid size.

:class:`SinePositionEncoding2D` (DETR), :class:`LearnedPositionEncoding2D` (ViT table, bicubically resampled to
each image's unpadded grid), :class:`RoPE2D` (axial rotary, DINOv3 style).
Grids are (B, h, w, D); masks are (B, h, w), True = padding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _valid_extent(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image unpadded extent (rows, cols) of a top-left-aligned (B, h, w) padding mask."""
    valid = ~mask
    rows = valid.any(dim=2).sum(dim=1)  # (B,)
    cols = valid.any(dim=1).sum(dim=1)  # (B,)
    return rows, cols


class SinePositionEncoding2D(nn.Module):
    """DETR's 2D sine encoding (temperature 10000, coordinates normalised to (0, 2*pi] over the unpadded extent).

    Args:
        dim: total channels D (divisible by 4); first D/2 for y, then D/2 for x, sin on even, cos on odd channels.
    """

    temperature, scale, eps = 10000.0, 2 * math.pi, 1e-6

    def __init__(self, dim: int = 256) -> None:
        super().__init__()
        if dim % 4:
            raise ValueError(f"SinePositionEncoding2D needs dim divisible by 4, got {dim}")
        self.dim = dim

    def forward(self, mask: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """Encode a (B, h, w) bool grid mask (True = padding) as (B, h, w, D) in ``dtype``; values on padded cells
        are not meaningful."""
        not_mask = (~mask).float()
        y = not_mask.cumsum(1)  # (B, h, w)
        x = not_mask.cumsum(2)  # (B, h, w)
        y = y / (y[:, -1:, :] + self.eps) * self.scale
        x = x / (x[:, :, -1:] + self.eps) * self.scale
        n = self.dim // 2
        i = torch.arange(n, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / n)  # (D/2,)
        pos_x = x[..., None] / dim_t  # (B, h, w, D/2)
        pos_y = y[..., None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)  # (B,h,w,D/2)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).to(dtype)  # (B, h, w, D)


def resample_grid(table: Tensor, size: tuple[int, int]) -> Tensor:
    """Bicubic, antialiased, fp32 resampling of a (gh, gw, D) table to ``size`` -> (h, w, D)."""
    if tuple(table.shape[:2]) == tuple(size):
        return table
    x = table.float().permute(2, 0, 1).unsqueeze(0)  # (1, D, gh, gw)
    x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
    return x[0].permute(1, 2, 0).to(table.dtype)  # (h, w, D)


class LearnedPositionEncoding2D(nn.Module):
    """Learned absolute 2D table ``pos_embed`` (1, P + gh*gw, D), resampled to each image's real grid; ``grid_size``
    is the reference grid (gh, gw) (224/16 -> (14, 14)), ``num_prefix`` P the class/register rows in front."""

    def __init__(self, dim: int, grid_size: tuple[int, int] = (14, 14), num_prefix: int = 0) -> None:
        super().__init__()
        self.dim, self.grid_size, self.num_prefix = dim, tuple(grid_size), num_prefix
        self.pos_embed = nn.Parameter(torch.zeros(1, num_prefix + self.grid_size[0] * self.grid_size[1], dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    @property
    def prefix(self) -> Tensor | None:
        """(1, P, D) rows for the prefix tokens, or None."""
        return self.pos_embed[:, : self.num_prefix] if self.num_prefix else None

    def forward(self, mask: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """Encode a (B, h, w) bool grid mask (True = padding, top-left aligned images) as (B, h, w, D): the table
        resampled to each image's unpadded extent, zeros on padding, in ``dtype`` (default: the parameter's)."""
        B, h, w = mask.shape
        table = self.pos_embed[0, self.num_prefix:].reshape(*self.grid_size, self.dim)  # (gh, gw, D)
        dtype = dtype or table.dtype
        if not mask.any():
            return resample_grid(table, (h, w)).to(dtype).unsqueeze(0).expand(B, -1, -1, -1)
        out = torch.zeros(B, h, w, self.dim, dtype=dtype, device=mask.device)
        rows, cols = _valid_extent(mask)
        for r, c in torch.unique(torch.stack((rows, cols), 1), dim=0).tolist():  # one resample per size
            sel = (rows == r) & (cols == c)
            if r and c:
                out[sel, :r, :c] = resample_grid(table, (r, c)).to(dtype)
        return out


def rotate_half(x: Tensor) -> Tensor:
    """(..., D) -> (..., D): [x1, x2] -> [-x2, x1] over the two halves of the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
    """Rotate the last N tokens of x (B, H, T, hd) by rope = (sin, cos), each (B or 1, N, hd); the T - N leading
    (prefix) tokens are left unrotated."""
    sin, cos = rope
    n = sin.shape[-2]
    sin, cos = sin.unsqueeze(1).to(x.dtype), cos.unsqueeze(1).to(x.dtype)  # (B, 1, N, hd)
    if n == x.shape[-2]:
        return x * cos + rotate_half(x) * sin
    prefix, body = x[..., :-n, :], x[..., -n:, :]
    return torch.cat((prefix, body * cos + rotate_half(body) * sin), dim=-2)


class RoPE2D(nn.Module):
    """Axial 2D rotary position embedding (no weights); ``head_dim`` divisible by 4, ``base`` the period base.

    Each rotated channel pair's first half carries y, the second x: angles ``2*pi*coord / period``,
    ``period_i = base ** (2i / (head_dim/2))``, i < head_dim/4, coords = patch centres in [-1, 1] of the unpadded
    extent.
    """

    def __init__(self, head_dim: int, base: float = 100.0) -> None:
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"RoPE2D needs head_dim divisible by 4, got {head_dim}")
        self.head_dim, self.base = head_dim, base
        q = head_dim // 4
        self.register_buffer("periods", base ** (2 * torch.arange(q, dtype=torch.float32) / (head_dim // 2)),
                             persistent=False)

    def coords(self, mask: Tensor) -> Tensor:
        """(B, h, w) padding mask -> (B, h*w, 2) (y, x) coordinates in [-1, 1] over the unpadded extent."""
        B, h, w = mask.shape
        dev = mask.device
        ys = torch.arange(h, device=dev, dtype=torch.float32) + 0.5
        xs = torch.arange(w, device=dev, dtype=torch.float32) + 0.5
        ys = ys.view(1, h, 1).expand(B, h, w)  # (B, h, w)
        xs = xs.view(1, 1, w).expand(B, h, w)
        rows, cols = _valid_extent(mask)
        ys = 2 * ys / rows.clamp(min=1).view(B, 1, 1) - 1
        xs = 2 * xs / cols.clamp(min=1).view(B, 1, 1) - 1
        return torch.stack((ys, xs), dim=-1).reshape(B, h * w, 2)  # (B, h*w, 2)

    def forward(self, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Build (sin, cos) for a (B, h, w) bool grid mask (True = padding): each (B, h*w, head_dim), fp32."""
        c = self.coords(mask)  # (B, N, 2)
        angles = 2 * math.pi * c[..., None] / self.periods  # (B, N, 2, hd/4)
        angles = angles.flatten(2).repeat(1, 1, 2)  # (B, N, hd)
        return angles.sin(), angles.cos()
