"""The caption preprocessing: one code path for the Python API, the folder tool and the datamodule's validation.

:class:`CaptionPreprocess` is :func:`vitkit.data.transforms.val_transforms` (short side resized to ``size``, the
long side capped at ``max_size``; unlike torchvision the short side never rounds down to 0 px for extreme aspect
ratios; ImageNet normalisation) applied per image, then zero padding bottom/right with a mask (True = padding).
:class:`~vitkit.captioning.datamodule.CaptionDataModule` validates with its :attr:`transform`; files are read by
:func:`vitkit.data.images.load_rgb`, so ``vitkit.load(ckpt).caption(path)`` and ``tools/caption.py`` see the same
pixels for the same file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from PIL import Image
from torch import Tensor

from vitkit.data.collate import pad_images
from vitkit.data.transforms import EvalPreprocess


class CaptionPreprocess(EvalPreprocess):
    """Images -> the captioner's input: short side to ``size`` (long side capped at ``max_size``), normalised.

    Calling it on one image (a path, a PIL image in any mode, or a (3, H, W) uint8 / [0, 1] float tensor) gives
    its (3, h, w) float32 tensor: :class:`~vitkit.data.folder.ImageFolder`'s transform in ``tools/caption.py``.
    :meth:`batch` preprocesses and pads several. Picklable, for DataLoader workers.

    Args:
        size: short side in px after resizing.
        max_size: cap on the long side in px (must exceed ``size``), or None.

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
        """Preprocess and pad images.

        Args:
            images: paths, PIL images or (3, H, W) tensors (at least one).

        Returns:
            The padded batch (B, 3, Hmax, Wmax) float32 and its mask (B, Hmax, Wmax), True = padding.

        Raises:
            ImageReadError: a path cannot be read.
            ValueError: no images, or a tensor that is not (3, H, W).
        """
        if not images:
            raise ValueError("no images given")
        return pad_images([self(image) for image in images])
