"""ONNX tracing helpers shared by the tasks: in-graph padding to the patch size, a dummy batch with padding, and the
refusal of encoders a trace would get wrong. The dummy batch always holds padding so traced mask branches are kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitkit.layers import LearnedPositionEncoding2D, PatchEmbed


def trace_multiple(encoder: nn.Module) -> int:
    """Pixels per token side that the wrappers pad to (1 for patch sources that need no padding)."""
    pe = encoder.patch_embed
    return pe.patch_size if isinstance(pe, PatchEmbed) else 1


def trace_stride(encoder: nn.Module) -> int:
    """Pixels per token side of the encoder's grid (the unit of the dummy batch's padding)."""
    return int(getattr(encoder.patch_embed, "stride", 16))


def check_traceable(encoder: nn.Module) -> None:
    """Refuse (ValueError) an encoder whose trace would be frozen to the dummy batch's sizes."""
    if isinstance(getattr(encoder, "pos", None), LearnedPositionEncoding2D):
        raise ValueError("cannot export an encoder with pos_embed='learned' to ONNX: its table is resampled to each "
                         "image's unpadded grid with sizes read from the mask at run time, which a trace would freeze "
                         "to the dummy batch's sizes. Encoders with pos_embed 'sine' or 'rope' export.")


def pad_to_multiple(images: Tensor, mask: Tensor, multiple: int) -> tuple[Tensor, Tensor]:
    """Zero-pad images (B, 3, H, W) and pad mask (B, H, W) with True at the bottom/right to a multiple of
    ``multiple``; the amounts are computed from the input shape, so the traced graph pads any size."""
    if multiple == 1:
        return images, mask
    H, W = images.shape[-2:]
    pad = (0, (-W) % multiple, 0, (-H) % multiple)
    return F.pad(images, pad), F.pad(mask, pad, value=True)  # (B, 3, H', W'), (B, H', W')


def dummy_inputs(batch: int, height: int, width: int, stride: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A random normalised batch: images (B, 3, H, W) zero over padding and mask (B, H, W) True = padding; the
    last image has padding at least two tokens (``stride`` px each) wide at the bottom and right."""
    if min(height, width) < 3 * stride:
        raise ValueError(f"trace size {height}x{width} is too small: need at least {3 * stride} px per side "
                         f"(three tokens of {stride} px) to place padding in the dummy batch")
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, height, width, generator=g)
    mask = torch.zeros(batch, height, width, dtype=torch.bool)
    ph, pw = max(height // 4, 2 * stride), max(width // 4, 2 * stride)
    mask[-1, height - ph:] = True
    mask[-1, :, width - pw:] = True
    return images.masked_fill(mask[:, None], 0.0), mask
