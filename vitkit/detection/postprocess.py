"""Turn raw detection outputs into per-image scored boxes in pixels of the original image."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert


class PostProcess(nn.Module):
    """Scores, labels and absolute xyxy boxes from ``pred_logits``/``pred_boxes``, sorted by score, descending.

    Softmax heads: best class except no-object per query, then the ``num_select`` best queries. Sigmoid heads:
    top ``num_select`` over all Q*C (query, class) scores, so a query may appear with several classes.

    Args:
        sigmoid: True for C sigmoid logits; False for a softmax head (C+1 logits, last = no-object).
        num_select: detections kept per image (at most Q for softmax, Q*C for sigmoid).
    """

    def __init__(self, sigmoid: bool = False, num_select: int = 100) -> None:
        super().__init__()
        self.sigmoid, self.num_select = sigmoid, num_select

    @torch.no_grad()
    def forward(self, outputs: dict, target_sizes: Tensor) -> list[dict[str, Tensor]]:
        """Post-process a batch.

        Args:
            outputs: ``pred_logits`` (B, Q, C+1) softmax / (B, Q, C) sigmoid; ``pred_boxes`` (B, Q, 4) normalised
                cxcywh.
            target_sizes: (B, 2) [h, w] of the original images, in pixels.

        Returns:
            B dicts: ``scores`` (K,) float32, ``labels`` (K,) int64 in [0, C), ``boxes`` (K, 4) xyxy pixels
            clamped to the image; K = min(num_select, Q) (softmax) or min(num_select, Q*C) (sigmoid).
        """
        scores, labels, boxes = self.batched(outputs["pred_logits"], outputs["pred_boxes"], target_sizes)
        return [
            {"scores": s, "labels": lab.contiguous(), "boxes": b}
            for s, lab, b in zip(scores, labels, boxes, strict=True)
        ]

    @torch.no_grad()
    def batched(self, logits: Tensor, boxes: Tensor, target_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`forward` as batch tensors, without a per-image loop (the traced form): (B, Q, C+1) softmax /
        (B, Q, C) sigmoid ``logits``, (B, Q, 4) normalised cxcywh ``boxes`` and (B, 2) [h, w] ``target_sizes`` in
        pixels -> scores (B, K) float32, labels (B, K) int64, boxes (B, K, 4) float32 xyxy pixels, by score."""
        with torch.autocast(logits.device.type, enabled=False):
            logits = logits.float()  # (B, Q, C[+1])
            boxes = box_convert(boxes.float(), "cxcywh", "xyxy")  # (B, Q, 4)
            if self.sigmoid:
                num_classes = logits.shape[-1]
                flat = logits.sigmoid().flatten(1)  # (B, Q*C)
                scores, top = flat.topk(min(self.num_select, flat.shape[1]), dim=1)  # (B, K)
                labels, query = top % num_classes, top // num_classes
            else:
                scores, labels = logits.softmax(-1)[..., :-1].max(-1)  # (B, Q)
                scores, query = scores.topk(min(self.num_select, scores.shape[1]), dim=1)  # (B, K)
                labels = labels.gather(1, query)
            boxes = boxes.gather(1, query.unsqueeze(-1).expand(-1, -1, 4))  # (B, K, 4)
            boxes = to_pixels(boxes, target_sizes[:, None])
        return scores, labels.to(torch.int64), boxes


def _scale(sizes: Tensor, like: Tensor) -> Tensor:
    """(..., 2) [h, w] sizes -> (..., 4) [w, h, w, h] in ``like``'s dtype and device."""
    h, w = sizes.to(like).unbind(-1)
    return torch.stack([w, h, w, h], dim=-1)


def to_pixels(boxes: Tensor, sizes: Tensor) -> Tensor:
    """Normalised xyxy boxes (..., 4) -> xyxy pixels clamped to the image, for [h, w] ``sizes`` (..., 2) that
    broadcast with them."""
    scale = _scale(sizes, boxes)  # (..., 4)
    return (boxes * scale).clamp(min=torch.zeros_like(scale), max=scale)


def from_pixels(boxes: Tensor, sizes: Tensor) -> Tensor:
    """xyxy pixel boxes (..., 4) of images of [h, w] ``sizes`` (..., 2) -> normalised cxcywh (the model's form),
    not clamped."""
    return box_convert(boxes / _scale(sizes, boxes).clamp(min=1), "xyxy", "cxcywh")
