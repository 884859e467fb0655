"""Hungarian matching between predicted queries and ground-truth boxes (DETR's matcher).

Differences from the reference: costs in float32 with autocast off, non-finite costs replaced by a large finite
value, one host transfer per batch, and ``repeat=k`` matches every target up to k times (one-to-many).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou

from vitkit.detection.box_ops import cxcywh_to_xyxy

# Replaces NaN/inf costs; far above any real cost (class <= ~10, L1 <= 4 x 5, GIoU <= 2 x 2).
_BIG_COST = 1e8
FOCAL_GAMMA = 2.0  # gamma of the focal class cost here and of SetCriterion's focal / varifocal losses


class HungarianMatcher(nn.Module):
    """One-to-one (or one-to-k) assignment minimising weighted class + L1 + GIoU cost.

    ``cost_class`` weighs -p (softmax heads) or the focal cost (sigmoid heads; head set by :meth:`bind`, softmax
    when unbound); ``cost_bbox`` the L1 distance between normalised cxcywh boxes; ``cost_giou`` -GIoU.
    """

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0) -> None:
        super().__init__()
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.sigmoid, self.focal_alpha = False, 0.25

    def bind(self, sigmoid: bool, focal_alpha: float = 0.25) -> HungarianMatcher:
        """Score the class cost for a head; returns ``self``. ``sigmoid``: C logits, focal cost (alpha
        ``focal_alpha``, gamma :data:`FOCAL_GAMMA`) instead of softmax (C+1 logits, last = no-object)."""
        self.sigmoid, self.focal_alpha = bool(sigmoid), float(focal_alpha)
        return self

    def _class_cost(self, logits: Tensor, labels: Tensor) -> Tensor:
        """(N, C[+1]) logits, (T,) labels -> (N, T) class cost."""
        if not self.sigmoid:
            return -logits.softmax(-1)[:, labels]
        p = logits.sigmoid()
        # -log(p) = softplus(-x), -log(1-p) = softplus(x): stable for large |x|.
        pos = self.focal_alpha * (1 - p) ** FOCAL_GAMMA * F.softplus(-logits)
        neg = (1 - self.focal_alpha) * p**FOCAL_GAMMA * F.softplus(logits)
        return (pos - neg)[:, labels]

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict], repeat: int = 1) -> list[tuple[Tensor, Tensor]]:
        """Match each image's queries to its targets.

        Args:
            outputs: ``pred_logits`` (B, Q, C+1) softmax / (B, Q, C) sigmoid, ``pred_boxes`` (B, Q, 4) cxcywh.
            targets: B dicts with ``labels`` (n,) int64 and ``boxes`` (n, 4) normalised cxcywh.
            repeat: match every target up to this many times; 1 is one-to-one.

        Returns:
            B pairs ``(src_idx, tgt_idx)``, int64 on CPU, each of length min(Q, repeat * n), sorted by
            ``src_idx``. ``tgt_idx`` indexes the image's original (unrepeated) targets.
        """
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        bs, nq = logits.shape[:2]
        sizes = [len(t["boxes"]) for t in targets]
        empty = torch.empty(0, dtype=torch.int64)
        if sum(sizes) == 0:
            return [(empty, empty) for _ in sizes]

        with torch.autocast(logits.device.type, enabled=False):
            out_logits = logits.flatten(0, 1).float()  # (B*Q, C[+1])
            out_boxes = boxes.flatten(0, 1).float()  # (B*Q, 4)
            tgt_labels = torch.cat([t["labels"] for t in targets]).to(logits.device)  # (T,)
            tgt_boxes = torch.cat([t["boxes"] for t in targets]).to(out_boxes)  # (T, 4)
            cost = (
                self.cost_class * self._class_cost(out_logits, tgt_labels)
                + self.cost_bbox * torch.cdist(out_boxes, tgt_boxes, p=1)
                - self.cost_giou * generalized_box_iou(cxcywh_to_xyxy(out_boxes), cxcywh_to_xyxy(tgt_boxes))
            )  # (B*Q, T)
            cost = torch.nan_to_num(cost, nan=_BIG_COST, posinf=_BIG_COST, neginf=-_BIG_COST)
        cost = cost.view(bs, nq, -1).cpu().numpy()  # the one host transfer

        indices, start = [], 0
        for i, n in enumerate(sizes):
            c = cost[i, :, start : start + n]  # (Q, n)
            start += n
            if n == 0:
                indices.append((empty, empty))
                continue
            # Tiled columns are [t0..tn-1, t0..tn-1, ...]: column j is target j % n.
            src, tgt = linear_sum_assignment(np.tile(c, (1, repeat)) if repeat > 1 else c)
            indices.append((torch.as_tensor(src, dtype=torch.int64), torch.as_tensor(tgt % n, dtype=torch.int64)))
        return indices
