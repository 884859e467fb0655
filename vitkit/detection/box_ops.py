"""Box helpers that ``torchvision.ops`` lacks: a degenerate-safe cxcywh->xyxy and a paired (element-wise) IoU."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_convert


def cxcywh_to_xyxy(boxes: Tensor, min_size: float = 1e-6) -> Tensor:
    """Convert (..., 4) cxcywh boxes to (..., 4) xyxy with width/height clamped to ``min_size`` (in the boxes'
    units), so x1 > x0 and y1 > y0; NaN stays NaN."""
    cxcy, wh = boxes.split(2, dim=-1)
    return box_convert(torch.cat([cxcy, wh.clamp(min=min_size)], dim=-1), "cxcywh", "xyxy")


def paired_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """(N,) IoU in [0, 1] of each (N, 4) xyxy box in ``boxes1`` with the box at the same index in ``boxes2``;
    ``eps`` is added to the union."""
    lt = torch.maximum(boxes1[:, :2], boxes2[:, :2])  # (N, 2)
    rb = torch.minimum(boxes1[:, 2:], boxes2[:, 2:])  # (N, 2)
    inter = (rb - lt).clamp(min=0).prod(dim=-1)  # (N,)
    area1 = (boxes1[:, 2:] - boxes1[:, :2]).clamp(min=0).prod(dim=-1)
    area2 = (boxes2[:, 2:] - boxes2[:, :2]).clamp(min=0).prod(dim=-1)
    return inter / (area1 + area2 - inter + eps)
