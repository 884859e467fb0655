"""Contrastive denoising queries (DN-DETR / DINO) for anchor-box DETRs.

Each ground-truth box becomes ``G`` groups of ``pad`` positives (jitter < half the box size) and ``pad`` negatives
(between one and two half-sizes), ``pad`` = most targets of any image; some labels are flipped. Groups see the
matching queries, not each other; matching queries never see them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert

from vitkit.detection.box_ops import cxcywh_to_xyxy


@dataclass
class DenoisingMeta:
    """Where the denoising queries sit: ``num_groups`` groups of ``2 * pad`` queries, positives first."""
    num_groups: int
    pad: int

    @property
    def num_queries(self) -> int:
        return 2 * self.pad * self.num_groups

    def positive_indices(self, num_targets: list[int]) -> list[tuple[Tensor, Tensor]]:
        """Per image, (query index, target index) of the positive queries, for the loss (no matching needed)."""
        out = []
        for n in num_targets:
            j = torch.arange(n)
            src = torch.cat([g * 2 * self.pad + j for g in range(self.num_groups)])  # (G*n,)
            out.append((src, j.repeat(self.num_groups)))
        return out


@dataclass
class DenoisingQueries:
    """Denoising queries for one batch, fed to the decoder before the matching queries.

    Attributes:
        content: (B, N, D) embeddings of the (partly flipped) labels.
        boxes: (B, N, 4) anchors: the noised target boxes, cxcywh in [0, 1] (zeros for padding entries).
        meta: the groups' layout (:class:`DenoisingMeta`), returned as ``dn_outputs["dn_meta"]``.
    """
    content: Tensor
    boxes: Tensor
    meta: DenoisingMeta

    @property
    def num_queries(self) -> int:
        """N, the number of denoising queries."""
        return self.meta.num_queries


def make_denoising_queries(
    targets: list[dict],
    label_embed: nn.Embedding,
    num_classes: int,
    num_denoising: int,
    label_noise: float = 0.5,
    box_noise: float = 1.0,
) -> DenoisingQueries | None:
    """Build noised queries from the targets.

    Args:
        targets: B dicts with ``labels`` (n,) and ``boxes`` (n, 4) normalised cxcywh.
        label_embed: (num_classes + 1, D) embedding; row ``num_classes`` is the padding entry.
        num_denoising: query budget; groups = max(1, num_denoising // pad).
        label_noise: twice the probability of replacing a label by a random class.
        box_noise: scale of the box jitter (1 = up to half the box size for positives).

    Returns:
        :class:`DenoisingQueries`: content (B, N, D), anchors (B, N, 4) in [0, 1] and the :class:`DenoisingMeta`;
        None when no image has a target.
    """
    sizes = [len(t["labels"]) for t in targets]
    pad = max(sizes, default=0)
    if pad == 0 or num_denoising <= 0:
        return None
    device = label_embed.weight.device
    B, G = len(targets), max(1, num_denoising // pad)
    labels = torch.full((B, pad), num_classes, dtype=torch.int64, device=device)  # (B, pad), pad class
    boxes = torch.zeros(B, pad, 4, device=device)  # (B, pad, 4)
    real = torch.zeros(B, pad, dtype=torch.bool, device=device)
    for i, t in enumerate(targets):
        n = sizes[i]
        labels[i, :n], boxes[i, :n], real[i, :n] = t["labels"].to(device), t["boxes"].to(device).float(), True
    labels, boxes, real = labels.repeat(1, 2 * G), boxes.repeat(1, 2 * G, 1), real.repeat(1, 2 * G)  # (B, N[, 4])
    N = 2 * G * pad
    negative = ((torch.arange(N, device=device) // pad) % 2 == 1)[None, :, None]  # (1, N, 1): second half of a group

    flip = (torch.rand(B, N, device=device) < label_noise * 0.5) & real
    labels = torch.where(flip, torch.randint_like(labels, num_classes), labels)  # (B, N)

    xyxy = cxcywh_to_xyxy(boxes)  # (B, N, 4)
    half = boxes[..., 2:].repeat(1, 1, 2) * 0.5 * box_noise  # (B, N, 4): (w/2, h/2, w/2, h/2)
    sign = torch.randint_like(xyxy, 2) * 2 - 1
    part = torch.rand_like(xyxy) + negative.float()  # [0, 1) positives, [1, 2) negatives
    xyxy = (xyxy + sign * part * half).clamp(0, 1)
    anchors = box_convert(xyxy, "xyxy", "cxcywh").clamp(0, 1)  # (B, N, 4)
    anchors = torch.where(real[..., None], anchors, torch.zeros_like(anchors))
    content = label_embed(labels)  # (B, N, D)
    return DenoisingQueries(content, anchors, DenoisingMeta(G, pad))


def query_attention_mask(num_dn: int, num_groups: int, num_queries: int, num_one2many: int,
                         device: torch.device) -> Tensor | None:
    """(T, T) bool self-attention mask over [denoising | one-to-one | one-to-many] queries, True = masked; each group
    attends within itself, denoising groups may also read the one-to-one queries."""
    total = num_dn + num_queries + num_one2many
    if total == num_queries:
        return None
    group = torch.zeros(total, dtype=torch.int64, device=device)
    if num_dn:
        group[:num_dn] = 2 + torch.arange(num_dn, device=device) // (num_dn // num_groups)
    group[num_dn + num_queries:] = 1
    allowed = group[:, None] == group[None, :]
    allowed |= (group[:, None] >= 2) & (group[None, :] == 0)
    return ~allowed
