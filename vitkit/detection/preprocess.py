"""The detection preprocessing shared by the Python API, the folder tool, export and the datasets: DETR's
validation transform per image, then zero padding bottom/right with a mask (True = padding)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from PIL import Image
from torch import Tensor

from vitkit.data.collate import collate_detection
from vitkit.data.transforms import EvalPreprocess


class DetectionPreprocess(EvalPreprocess):
    """Images -> the detector's input: short side to ``size`` (long side capped at ``max_size``), normalised.

    Called on one image (a path, a PIL image in any mode, or a (3, H, W) uint8 / [0, 1] float tensor) it returns
    its (3, h, w) float32 tensor; :meth:`batch` preprocesses and pads several. Picklable.

    Args:
        size: short side in px.
        max_size: cap on the long side in px (must exceed ``size``), or None.
    """

    def batch(self, images: Sequence[str | os.PathLike | Image.Image | Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Preprocess and pad images (paths, PIL images or (3, H, W) tensors) into the padded batch (B, 3, Hmax,
        Wmax) float32, its mask (B, Hmax, Wmax) (True = padding) and the original (upright, decoded) sizes (B, 2)
        int64 [h, w].

        Raises:
            ImageReadError: a path cannot be read.
            ValueError: a tensor is not (3, H, W).
        """
        items, sizes = [], []
        for image in images:
            t = self.tensor(image)  # (3, H, W) upright pixels
            sizes.append([int(t.shape[-2]), int(t.shape[-1])])
            items.append((self(t), {}))
        batch, mask, _ = collate_detection(items)
        return batch, mask, torch.tensor(sizes, dtype=torch.int64)  # (B, 2)
