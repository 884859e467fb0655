"""Box helpers that ``torchvision.ops`` lacks: a degenerate-safe cxcywh->xyxy and a paired (element-wise) IoU.

Everything else (pairwise IoU/GIoU, the GIoU loss, format conversion) comes from ``torchvision.ops``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_convert


def cxcywh_to_xyxy(boxes: Tensor, min_size: float = 1e-6) -> Tensor:
    """Convert cxcywh to xyxy with width/height clamped to ``min_size``.

    A predicted box with zero or negative size would otherwise give a zero-area union (0/0 in GIoU). NaN stays
    NaN (callers decide whether to sanitise).

    Args:
        boxes: (..., 4) boxes (cx, cy, w, h).
        min_size: smallest width/height kept, in the boxes' units.

    Returns:
        (..., 4) boxes (x0, y0, x1, y1) with x1 > x0 and y1 > y0.
    """
    cxcy, wh = boxes.split(2, dim=-1)
    return box_convert(torch.cat([cxcy, wh.clamp(min=min_size)], dim=-1), "cxcywh", "xyxy")


def paired_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """IoU of each box with the box at the same index (``box_iou(a, b).diagonal()`` without the N x N matrix).

    Args:
        boxes1: (N, 4) xyxy boxes.
        boxes2: (N, 4) xyxy boxes.
        eps: added to the union against division by zero.

    Returns:
        (N,) IoU in [0, 1].
    """
    lt = torch.maximum(boxes1[:, :2], boxes2[:, :2])  # (N, 2)
    rb = torch.minimum(boxes1[:, 2:], boxes2[:, 2:])  # (N, 2)
    inter = (rb - lt).clamp(min=0).prod(dim=-1)  # (N,)
    area1 = (boxes1[:, 2:] - boxes1[:, :2]).clamp(min=0).prod(dim=-1)
    area2 = (boxes2[:, 2:] - boxes2[:, :2]).clamp(min=0).prod(dim=-1)
    return inter / (area1 + area2 - inter + eps)
