"""The caption preprocessing shared by the Python API, the folder tool and the datamodule's validation."""

from __future__ import annotations

import os
from collections.abc import Sequence

from PIL import Image
from torch import Tensor

from vitkit.data.collate import pad_images
from vitkit.data.transforms import EvalPreprocess


class CaptionPreprocess(EvalPreprocess):
    """Images -> the captioner's input: short side to ``size`` (long side capped at ``max_size``), normalised.

    One image (path, PIL image, or (3, H, W) uint8 / [0, 1] float tensor) -> (3, h, w) float32; :meth:`batch` pads.

    Raises:
        ValueError: ``size`` < 1, or ``max_size`` <= ``size``.
    """

    def __init__(self, size: int = 224, max_size: int | None = 448) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1 px, got {size}")
        if max_size is not None and max_size <= size:
            raise ValueError(f"max_size ({max_size}) must exceed size ({size})")
        super().__init__(size, max_size)

    def batch(self, images: Sequence[str | os.PathLike | Image.Image | Tensor]) -> tuple[Tensor, Tensor]:
        """Preprocess and pad images (paths, PIL images or (3, H, W) tensors, at least one).

        Returns:
            The padded batch (B, 3, Hmax, Wmax) float32 and its mask (B, Hmax, Wmax), True = padding.

        Raises:
            ImageReadError: a path cannot be read.
            ValueError: no images, or a tensor that is not (3, H, W).
        """
        if not images:
            raise ValueError("no images given")
        return pad_images([self(image) for image in images])
