"""Extra memory levels for a single-scale ViT detector (a port of ViTDet's simple feature pyramid).

:class:`FinerLevel` (stride s/2: 2x2 transposed conv, plus a 1x1 lateral from the conv stem when present, unlike
ViTDet) and :class:`CoarserLevel` (stride 2s: 3x3 stride-2 conv). Padding-aware: padded cells are zeroed before
each spatial mixing.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class FinerLevel(nn.Module):
    """Stride-s grid (B, h, w, D) -> stride-s/2 grid (B, 2h, 2w, D); ``lateral_channels``: channels of the stem
    map at stride s/2 (None: no lateral input)."""
    def __init__(self, dim: int, lateral_channels: int | None = None) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)
        self.lateral = nn.Conv2d(lateral_channels, dim, 1) if lateral_channels else None
        self.norm1 = nn.LayerNorm(dim)
        self.conv = nn.Conv2d(dim, dim, kernel_size=3, padding=1)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, tokens: Tensor, pad: Tensor, stem: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Upsample to tokens (B, 2h, 2w, D) and their padding mask (B, 2h, 2w).

        Args:
            tokens: (B, h, w, D) the encoder's grid.
            pad: (B, h, w) its padding mask, True = padding.
            stem: optional (features (B, c, 2h, 2w) zero over padding, padding mask (B, 2h, 2w)) from the stem.
        """
        x = tokens.masked_fill(pad[..., None], 0).permute(0, 3, 1, 2)  # (B, D, h, w)
        x = self.up(x)  # (B, D, 2h, 2w)
        if self.lateral is not None and stem is not None:
            feat, pad2 = stem
            x = x + self.lateral(feat.to(x.dtype))  # (B, D, 2h, 2w)
        else:
            pad2 = pad.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)  # (B, 2h, 2w)
        x = F.gelu(self.norm1(x.permute(0, 2, 3, 1)))  # (B, 2h, 2w, D)
        x = x.masked_fill(pad2[..., None], 0).permute(0, 3, 1, 2)  # (B, D, 2h, 2w)
        x = self.norm2(self.conv(x).permute(0, 2, 3, 1))  # (B, 2h, 2w, D)
        return x, pad2


class CoarserLevel(nn.Module):
    """Stride-s grid (B, h, w, D) -> stride-2s grid (B, ceil(h/2), ceil(w/2), D); ``dim`` is the token width D."""
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.down = nn.Conv2d(dim, dim, kernel_size=3, stride=2, padding=1)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: Tensor, pad: Tensor) -> tuple[Tensor, Tensor]:
        """(B, h, w, D) tokens and (B, h, w) padding mask -> the coarser grid and its padding mask."""
        x = tokens.masked_fill(pad[..., None], 0).permute(0, 3, 1, 2)  # (B, D, h, w)
        x = self.norm(self.down(x).permute(0, 2, 3, 1))  # (B, h2, w2, D)
        valid = F.max_pool2d((~pad)[:, None].float(), kernel_size=2, stride=2, ceil_mode=True)  # (B, 1, h2, w2)
        pad2 = valid[:, 0] == 0
        return x.masked_fill(pad2[..., None], 0), pad2
