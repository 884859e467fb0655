"""Batching images of different sizes: zero-pad bottom/right and return a padding mask (True = padding)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def pad_images(images: Sequence[Tensor], pad_to_multiple: int = 1) -> tuple[Tensor, Tensor]:
    """Zero-pad B (C, H_i, W_i) images (same C, dtype, device) at the bottom/right into one batch.

    Args:
        pad_to_multiple: round the batch's Hmax and Wmax up to a multiple of this (e.g. the patch size).

    Returns:
        images (B, C, Hmax, Wmax), zeros where padded; mask (B, Hmax, Wmax) bool, True = padding."""
    if not images:
        raise ValueError("cannot batch an empty list of images")
    if pad_to_multiple < 1:
        raise ValueError(f"pad_to_multiple must be >= 1, got {pad_to_multiple}")
    first = images[0]
    if any(img.dim() != 3 or img.shape[0] != first.shape[0] or img.dtype != first.dtype for img in images):
        raise ValueError("images must all be (C, H, W) with the same C and dtype: "
                         f"{[(tuple(img.shape), img.dtype) for img in images]}")
    m = pad_to_multiple
    h_max = -(-max(img.shape[1] for img in images) // m) * m
    w_max = -(-max(img.shape[2] for img in images) // m) * m
    batch = first.new_zeros((len(images), first.shape[0], h_max, w_max)).as_subclass(Tensor)  # (B, C, Hmax, Wmax)
    mask = torch.ones((len(images), h_max, w_max), dtype=torch.bool, device=first.device)  # (B, Hmax, Wmax)
    for i, img in enumerate(images):
        h, w = img.shape[1:]
        batch[i, :, :h, :w].copy_(img)
        mask[i, :h, :w] = False
    return batch, mask


def real_size(images: Tensor, mask: Tensor | None) -> Tensor:
    """(B, 3, H, W) images and their (B, H, W) padding (True) -> (B, 2) float: each image's real width, height."""
    B, _, H, W = images.shape
    if mask is None:
        return images.new_tensor([W, H], dtype=torch.float32).expand(B, 2)
    return torch.stack(((~mask).any(dim=1).sum(dim=1), (~mask).any(dim=2).sum(dim=1)), dim=1).float()  # (B, 2)


def rescale_batch(images: Tensor, mask: Tensor | None, scale: float,
                  pad_to_multiple: int = 1) -> tuple[Tensor, Tensor]:
    """Resize every image of a padded batch by ``scale`` > 0 (its real region, antialiased bilinear) and pad them again.

    Args:
        images: (B, C, H, W) zero-padded batch.
        mask: (B, H, W) True = padding, or None (no padding).

    Returns:
        images (B, C, H', W') and mask (B, H', W'), each real side ``max(1, round(scale * side))``."""
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    sizes = real_size(images, mask).long().tolist()  # B x [w, h]
    resized = [F.interpolate(img[None, :, :h, :w], size=(max(1, round(scale * h)), max(1, round(scale * w))),
                             mode="bilinear", antialias=True, align_corners=False)[0]
               for img, (w, h) in zip(images, sizes, strict=True)]
    return pad_images(resized, pad_to_multiple)


def collate_detection(batch: Sequence[tuple[Tensor, dict[str, Any]]],
                      pad_to_multiple: int = 1) -> tuple[Tensor, Tensor, list[dict[str, Any]]]:
    """Collate B ``(image (C, H_i, W_i), target dict)`` samples for detection, padding to ``pad_to_multiple``.

    Returns:
        images (B, C, Hmax, Wmax) zero-padded bottom/right; mask (B, Hmax, Wmax) bool, True = padding;
        targets, the list of B target dicts (as given)."""
    images, mask = pad_images([sample[0] for sample in batch], pad_to_multiple=pad_to_multiple)
    return images, mask, [sample[1] for sample in batch]


class DropNone:
    """Picklable wrapper of ``collate_fn`` that leaves ``None`` samples (unreadable images) out.

    Returns (when called on a list of samples):
        ``collate_fn`` of the non-None samples, or None when every sample is None."""

    def __init__(self, collate_fn: Callable[[list[Any]], Any]) -> None:
        self.collate_fn = collate_fn

    def __call__(self, batch: Sequence[Any]) -> Any:
        kept = [sample for sample in batch if sample is not None]
        return self.collate_fn(kept) if kept else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.collate_fn!r})"
