"""2D positional encodings, each aware of padding masks and of any grid size.

- :class:`SinePositionEncoding2D`: DETR's fixed sine encoding. Coordinates are cumulative sums over the
  unpadded mask, normalised by the unpadded extent and scaled to [0, 2*pi]; half of the channels encode y,
  half x (y first), with sin on even and cos on odd channels of each half.
- :class:`LearnedPositionEncoding2D`: a learned absolute table on a reference grid (the ViT way), resampled
  bicubically (fp32, antialiased, as timm does) to each image's *unpadded* grid, zeros over padding. The
  parameter ``pos_embed`` has timm's layout (1, P + gh*gw, D), P prefix rows when prefix tokens carry one.
- :class:`RoPE2D`: axial rotary embedding for q/k inside attention (DINOv3 style). No weights; coordinates
  are patch centres normalised to [-1, 1] over the unpadded extent, periods ``base ** (2i / (head_dim/2))``.
- :class:`RoPE1D`: rotary embedding of 1D token positions (text tokens of a causal decoder).

All grids are (B, h, w, D); masks are (B, h, w) with True = padding.
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
    """DETR's 2D sine encoding (temperature 10000, coordinates normalised to (0, 2*pi]).

    Args:
        dim: total channels D (divisible by 4); D/2 for y and D/2 for x.
    """

    temperature, scale, eps = 10000.0, 2 * math.pi, 1e-6

    def __init__(self, dim: int = 256) -> None:
        super().__init__()
        if dim % 4:
            raise ValueError(f"SinePositionEncoding2D needs dim divisible by 4, got {dim}")
        self.dim = dim

    def forward(self, mask: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """Encode a grid.

        Args:
            mask: (B, h, w) bool, True = padding.
            dtype: dtype of the result.

        Returns:
            (B, h, w, D) encodings; values on padded cells are not meaningful (they are masked out).
        """
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
    """Learned absolute 2D table, resampled to each image's real grid.

    Args:
        dim: channels D.
        grid_size: reference grid (gh, gw) the table is stored at (224/16 -> (14, 14)).
        num_prefix: prefix rows (class/register tokens) stored in front of the grid, timm-style.
    """

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
        """Encode a grid.

        Args:
            mask: (B, h, w) bool, True = padding (top-left aligned images).
            dtype: dtype of the result (default: the parameter's).

        Returns:
            (B, h, w, D): the table resampled to each image's unpadded extent, zeros on padding.
        """
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
    """Rotate the last N tokens of x (B, H, T, hd) by rope = (sin, cos), each (B or 1, N, hd).

    Prefix tokens (T - N leading ones, e.g. a class token) are left unrotated.
    """
    sin, cos = rope
    n = sin.shape[-2]
    sin, cos = sin.unsqueeze(1).to(x.dtype), cos.unsqueeze(1).to(x.dtype)  # (B, 1, N, hd)
    if n == x.shape[-2]:
        return x * cos + rotate_half(x) * sin
    prefix, body = x[..., :-n, :], x[..., -n:, :]
    return torch.cat((prefix, body * cos + rotate_half(body) * sin), dim=-2)


class RoPE2D(nn.Module):
    """Axial 2D rotary position embedding (no weights).

    The first half of each rotated pair of channels carries y, the second x: angles
    ``2*pi*coord / period`` with ``period_i = base ** (2i / (head_dim/2))``, i < head_dim/4, and coordinates the
    patch centres in [-1, 1] over each image's unpadded extent (DINOv3).

    Args:
        head_dim: per-head channels (divisible by 4).
        base: period base (DINOv3 uses 100).
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
        """Build (sin, cos) for a grid.

        Args:
            mask: (B, h, w) bool, True = padding.

        Returns:
            sin, cos: each (B, h*w, head_dim), fp32, for :func:`apply_rope`.
        """
        c = self.coords(mask)  # (B, N, 2)
        angles = 2 * math.pi * c[..., None] / self.periods  # (B, N, 2, hd/4)
        angles = angles.flatten(2).repeat(1, 1, 2)  # (B, N, hd)
        return angles.sin(), angles.cos()


class RoPE1D(nn.Module):
    """Rotary embedding of 1D token positions (no weights), in the layout :func:`apply_rope` expects.

    Channel pair (i, i + head_dim/2) turns by ``position / base ** (2i / head_dim)`` (the rotate-half
    convention of GPT-NeoX / LLaMA). Used for text-token positions in a causal decoder.

    Args:
        head_dim: per-head channels (even).
        base: frequency base.
    """

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE1D needs an even head_dim, got {head_dim}")
        self.head_dim, self.base = head_dim, base
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (hd/2,)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Build (sin, cos) for token positions.

        Args:
            positions: (N,) or (B, N) integer positions.

        Returns:
            sin, cos: each (1 or B, N, head_dim), fp32, for :func:`apply_rope`.
        """
        pos = positions.float() if positions.dim() == 2 else positions.float().unsqueeze(0)  # (B|1, N)
        angles = pos[..., None] * self.inv_freq  # (B|1, N, hd/2)
        angles = angles.repeat(1, 1, 2)  # (B|1, N, hd)
        return angles.sin(), angles.cos()
