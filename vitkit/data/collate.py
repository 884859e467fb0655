"""Batching images of different sizes: zero-pad bottom/right and return a padding mask (True = padding)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def pad_images(images: Sequence[Tensor], pad_to_multiple: int = 1) -> tuple[Tensor, Tensor]:
    """Zero-pad (C, H_i, W_i) images at the bottom/right into one batch.

    Args:
        images: B tensors (C, H_i, W_i) sharing C, dtype and device.
        pad_to_multiple: round the batch's Hmax and Wmax up to a multiple of this (e.g. the patch size).

    Returns:
        images (B, C, Hmax, Wmax), zeros where padded; mask (B, Hmax, Wmax) bool, True = padding.
    """
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
    """Resize every image of a padded batch by ``scale`` (its real region, antialiased bilinear) and pad them again.

    Boxes normalised to their image (DETR targets, object-token labels) stay valid; pixel boxes would need scaling.

    Args:
        images: (B, C, H, W) zero-padded batch.
        mask: (B, H, W) True = padding, or None (no padding).
        scale: the side factor, > 0 (0.5 = half the height and width).
        pad_to_multiple: as :func:`pad_images`.

    Returns:
        images (B, C, H', W') and mask (B, H', W'), each real side ``max(1, round(scale * side))``.
    """
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    sizes = real_size(images, mask).long().tolist()  # B x [w, h]
    resized = [F.interpolate(img[None, :, :h, :w], size=(max(1, round(scale * h)), max(1, round(scale * w))),
                             mode="bilinear", antialias=True, align_corners=False)[0]
               for img, (w, h) in zip(images, sizes, strict=True)]
    return pad_images(resized, pad_to_multiple)


def collate_detection(batch: Sequence[tuple[Tensor, dict[str, Any]]],
                      pad_to_multiple: int = 1) -> tuple[Tensor, Tensor, list[dict[str, Any]]]:
    """Collate ``(image, target)`` samples for detection.

    Use ``functools.partial(collate_detection, pad_to_multiple=32)`` for a DataLoader that pads to a multiple.

    Args:
        batch: B samples, each ``image`` (C, H_i, W_i) and a target dict (kept as is).
        pad_to_multiple: round the padded height and width up to a multiple of this.

    Returns:
        images (B, C, Hmax, Wmax) zero-padded bottom/right; mask (B, Hmax, Wmax) bool, True = padding;
        targets, the list of B target dicts.
    """
    images, mask = pad_images([sample[0] for sample in batch], pad_to_multiple=pad_to_multiple)
    return images, mask, [sample[1] for sample in batch]


class DropNone:
    """Wrap a collate function so that ``None`` samples (unreadable images skipped by a dataset) are left out.

    A picklable object (DataLoader workers run it). Used for validation, where a replacement image would
    duplicate predictions; see :mod:`vitkit.data.bad_images`.

    Args:
        collate_fn: the collate function for the remaining samples.

    Returns (when called on a list of samples):
        ``collate_fn`` of the non-None samples, or None when every sample is None
        (:class:`~vitkit.data.bad_images.SkippingDataLoader` leaves such batches out).
    """

    def __init__(self, collate_fn: Callable[[list[Any]], Any]) -> None:
        self.collate_fn = collate_fn

    def __call__(self, batch: Sequence[Any]) -> Any:
        kept = [sample for sample in batch if sample is not None]
        return self.collate_fn(kept) if kept else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.collate_fn!r})"
