"""The describe network: a DETR detector whose objects are captioned by a causal text decoder.

:class:`RegionCaptionHead` is the text side (a :class:`vitkit.captioning.Captioner` without image encoder reading
a per-region memory), :class:`DescribeModel` the detector and the head together.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert, box_iou, roi_align

from vitkit.captioning.model import Captioner
from vitkit.data.collate import real_size
from vitkit.detection.model import DETR


@dataclass
class Regions:
    """R regions of a batch of B images.

    Attributes:
        batch: (R,) long, the image of each region.
        boxes: (R, 4) normalised cxcywh in [0, 1], relative to the unpadded image.
        hidden: (R, D) the detector's query state of each region.
    """
    batch: Tensor
    boxes: Tensor
    hidden: Tensor


def box_features(boxes: Tensor) -> Tensor:
    """(R, 4) normalised cxcywh boxes -> (R, 6) fp32 ``cx, cy, w, h, log w, log h`` (w, h clamped at 1e-3)."""
    boxes = boxes.float()
    return torch.cat((boxes, boxes[:, 2:].clamp(min=1e-3).log()), dim=1)


def query_probs(logits: Tensor, sigmoid: bool) -> Tensor:
    """(B, Q, C) class probabilities of (B, Q, C[+1]) logits: sigmoid, or softmax without the no-object column."""
    logits = logits.float()
    return logits.sigmoid() if sigmoid else logits.softmax(-1)[..., :-1]


class RegionMemory(nn.Module):
    """The text decoder's memory per region: its query state, its box and ``roi_size``² RoI-aligned grid tokens.

    Args:
        det_dim: the detector's decoder width; dim: the text decoder's width.
    """

    def __init__(self, det_dim: int, dim: int, roi_size: int = 7) -> None:
        super().__init__()
        self.roi_size = roi_size
        self.query_proj = nn.Sequential(nn.LayerNorm(det_dim), nn.Linear(det_dim, dim))
        self.box_embed = nn.Sequential(nn.Linear(6, dim), nn.GELU(), nn.Linear(dim, dim))  # of box_features
        self.slot_pos_embed = nn.Parameter(torch.zeros(2, dim))  # query, box
        self.roi_proj = nn.Sequential(nn.LayerNorm(det_dim), nn.Linear(det_dim, dim))
        self.roi_pos_embed = nn.Parameter(torch.zeros(roi_size * roi_size, dim))
        nn.init.normal_(self.slot_pos_embed, std=0.02)
        nn.init.normal_(self.roi_pos_embed, std=0.02)

    def forward(self, regions: Regions, grid: Tensor, token_size: Tensor) -> Tensor:
        """Regions, the detector's grid (B, Dd, h, w) and each image's real size in tokens (B, 2) (width, height)
        -> (R, 2 + roi_size², D) memory."""
        q = self.query_proj(regions.hidden) + self.slot_pos_embed[0]  # (R, D)
        b = self.box_embed(box_features(regions.boxes).to(q.dtype)) + self.slot_pos_embed[1]  # (R, D)
        roi = self.roi_proj(self._roi_tokens(regions, grid, token_size)) + self.roi_pos_embed  # (R, roi_size², D)
        return torch.cat((q[:, None], b[:, None], roi), dim=1)  # (R, 2 + roi_size², D)

    def _roi_tokens(self, regions: Regions, grid: Tensor, token_size: Tensor) -> Tensor:
        """(R, roi_size², Dd) bilinear RoI samples of the grid inside each region's box, the box clipped to the
        centres of its image's real tokens (token i spans [i, i+1]; its centre is i + 0.5)."""
        size = token_size.to(grid.dtype)[regions.batch].repeat(1, 2)  # (R, 4): width, height, width, height
        xyxy = box_convert(regions.boxes.to(grid.dtype), "cxcywh", "xyxy") * size  # (R, 4) in tokens
        lo, hi = torch.full_like(size, 0.5), torch.ceil(size) - 0.5  # centres of the first and last real tokens
        xyxy = torch.minimum(torch.maximum(xyxy, lo), hi)
        rois = torch.cat((regions.batch[:, None].to(grid.dtype), xyxy), dim=1)  # (R, 5)
        feats = roi_align(grid, rois, self.roi_size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
        return feats.flatten(2).transpose(1, 2)  # (R, roi_size², Dd)


def detector_outputs(detector: DETR, images: Tensor, mask: Tensor | None = None,
                     targets: list[dict] | None = None) -> dict:
    """The detector's outputs with ``features`` (``hidden``, ``grid``, ``grid_mask``; see :meth:`DETR.forward`) and
    ``token_size`` (B, 2): each image's real width and height in grid tokens."""
    out = detector(images, mask, targets, features=True)
    out["token_size"] = real_size(images, mask) / float(detector.encoder.patch_embed.stride)  # (B, 2)
    return out


class RegionCaptionHead(nn.Module):
    """The text side of describe: region memory and a text decoder.

    Args:
        det_dim: the detector's decoder width.
        text: a :class:`Captioner` built with ``encoder=None``.
        roi_size: RoI-aligned tokens per side.
        max_regions: at most this many matched regions per training batch get a caption loss.
    """

    def __init__(self, det_dim: int, text: Captioner, roi_size: int = 7, max_regions: int = 64) -> None:
        super().__init__()
        if text.encoder is not None:
            raise ValueError("the region caption head's text Captioner must be built with encoder=None (it reads "
                             "the detector)")
        self.text = text
        self.region_memory = RegionMemory(det_dim, text.decoder.dim, roi_size)
        self.max_regions = max_regions

    def memory(self, outputs: dict, regions: Regions) -> Tensor:
        """(R, 2 + roi_size², D) text memory of regions of the images behind ``outputs`` (:func:`detector_outputs`:
        ``hidden``, ``grid``, ``token_size``)."""
        return self.region_memory(regions, outputs["grid"], outputs["token_size"])

    def caption_logits(self, outputs: dict, regions: Regions, tokens: Tensor) -> Tensor:
        """Teacher-forced (R, T, V) logits of regions' (R, T) caption ids."""
        return self.text.decode_tokens(tokens, self.memory(outputs, regions))

    def matched_regions(self, outputs: dict, indices: list[tuple[Tensor, Tensor]],
                        has_caption: list[Tensor]) -> tuple[Regions, list[tuple[int, int]]]:
        """Regions of the queries matched to objects that have a caption.

        Args:
            outputs: from :meth:`forward`.
            indices: per image, (query indices, target indices) of the final layer's matching.
            has_caption: per image, (n,) bool over its targets.

        Returns:
            The regions (predicted boxes, detached) and, per region, (image, target index), at most ``max_regions``.
        """
        rows, qs, pairs = [], [], []
        for b, (src, tgt) in enumerate(indices):
            for q, t in zip(src.tolist(), tgt.tolist(), strict=True):
                if bool(has_caption[b][t]) and len(pairs) < self.max_regions:
                    rows.append(b)
                    qs.append(q)
                    pairs.append((b, t))
        dev = outputs["pred_boxes"].device
        batch, q = torch.tensor(rows, dtype=torch.long, device=dev), torch.tensor(qs, dtype=torch.long, device=dev)
        return Regions(batch, outputs["pred_boxes"][batch, q].detach(), outputs["hidden"][batch, q]), pairs

    @staticmethod
    def overlapping_queries(outputs: dict, boxes: list[Tensor]) -> list[Tensor]:
        """Per image, (n_b,) long: for each given (n_b, 4) normalised cxcywh box, the query whose predicted box
        overlaps it most (IoU)."""
        out = []
        for b, given in enumerate(boxes):
            if not len(given):
                out.append(torch.zeros(0, dtype=torch.long, device=outputs["pred_boxes"].device))
                continue
            pred = box_convert(outputs["pred_boxes"][b].float(), "cxcywh", "xyxy")  # (Q, 4)
            out.append(box_iou(box_convert(given.float(), "cxcywh", "xyxy"), pred).argmax(dim=1))  # (n_b,)
        return out

    @classmethod
    def regions_for_boxes(cls, outputs: dict, boxes: list[Tensor]) -> Regions:
        """Regions of given boxes (per image (n_b, 4) normalised cxcywh), each with the state of the query that
        overlaps it most."""
        queries = cls.overlapping_queries(outputs, boxes)
        dev = outputs["pred_boxes"].device
        batch = torch.cat([torch.full((len(q),), b, dtype=torch.long, device=dev) for b, q in enumerate(queries)])
        hidden = torch.cat([outputs["hidden"][b, q] for b, q in enumerate(queries)])  # (R, D)
        given = torch.cat([g.to(dev, outputs["pred_boxes"].dtype).reshape(-1, 4) for g in boxes])  # (R, 4)
        return Regions(batch, given, hidden)


class DescribeModel(nn.Module):
    """A :class:`DETR` and its :class:`RegionCaptionHead`: detect (or take given boxes) and caption every region."""

    def __init__(self, detector: DETR, head: RegionCaptionHead) -> None:
        super().__init__()
        self.detector, self.head = detector, head

    def forward(self, images: Tensor, mask: Tensor | None = None) -> dict:
        """:func:`detector_outputs` of (B, 3, H, W) images and their (B, H, W) padding mask."""
        return detector_outputs(self.detector, images, mask)

    def query_scores(self, outputs: dict) -> tuple[Tensor, Tensor]:
        """(B, Q) score and (B, Q) label of each query's best class (sigmoid or softmax without no-object)."""
        return query_probs(outputs["pred_logits"], self.detector.sigmoid_head).max(dim=-1)

    def detections(self, outputs: dict, threshold: float = 0.3, max_detections: int = 50) -> list[dict[str, Tensor]]:
        """Each image's objects: one class per query (its best), kept above ``threshold``, at most
        ``max_detections`` by score. Per image: ``queries`` (n,) long, ``labels`` (n,), ``scores`` (n,),
        ``boxes`` (n, 4) normalised cxcywh."""
        scores, labels = self.query_scores(outputs)  # (B, Q)
        out = []
        for b in range(scores.shape[0]):
            keep = (scores[b] >= threshold).nonzero().flatten()
            keep = keep[scores[b, keep].argsort(descending=True, stable=True)][:max_detections]  # (n,)
            out.append({"queries": keep, "labels": labels[b, keep], "scores": scores[b, keep],
                        "boxes": outputs["pred_boxes"][b, keep]})
        return out

    @torch.no_grad()
    def describe(self, images: Tensor, mask: Tensor | None = None, boxes: list[Tensor] | None = None,
                 threshold: float = 0.3, max_detections: int = 50, **generation) -> list[dict[str, Tensor]]:
        """Detect (or take ``boxes``) and caption every region (call ``eval()`` first).

        Args:
            images: (B, 3, H, W) normalised images, zero-padded; mask: (B, H, W) True = padding.
            boxes: optional per image (n_b, 4) normalised cxcywh boxes to caption instead of detections.
            threshold, max_detections: detections kept per image (not used with ``boxes``).
            generation: :meth:`Captioner.generate_from_memory` options.

        Returns:
            Per image: ``boxes`` (n, 4) normalised cxcywh, ``labels`` (n,) and ``scores`` (n,) (for given boxes: the
            overlapping query's class and score), ``ids`` (n, T) caption token ids ``[BOS] ... [EOS] [PAD]...``.
        """
        head_dtype = next(self.head.parameters()).dtype  # a bf16 detector may feed an fp32 head (roi_align)
        outputs = {k: v.to(head_dtype) if isinstance(v, Tensor) and v.is_floating_point() else v
                   for k, v in self(images, mask).items()}
        found = self.detections(outputs, threshold, max_detections) if boxes is None else None
        if boxes is None:
            regions = self.detection_regions(outputs, found)
        else:
            regions = self.head.regions_for_boxes(outputs, boxes)
            found = self._given(outputs, boxes)
        ids = torch.zeros(0, 2, dtype=torch.long, device=images.device)
        if len(regions.batch):
            ids, _ = self.head.text.generate_from_memory(self.head.memory(outputs, regions), **generation)  # (R, T)
        counts = [len(d["boxes"]) for d in found]
        return [{**{k: d[k] for k in ("boxes", "labels", "scores")}, "ids": part}
                for d, part in zip(found, ids.split(counts), strict=True)]

    @staticmethod
    def detection_regions(outputs: dict, found: list[dict[str, Tensor]]) -> Regions:
        """The regions of :meth:`detections`' results (each its query's state and predicted box), image by image."""
        return Regions(torch.cat([torch.full_like(d["queries"], b) for b, d in enumerate(found)]),
                       torch.cat([d["boxes"] for d in found]),
                       torch.cat([outputs["hidden"][b, d["queries"]] for b, d in enumerate(found)]))

    def _given(self, outputs: dict, boxes: list[Tensor]) -> list[dict[str, Tensor]]:
        """Given boxes with the class and score of the query that overlaps each most."""
        scores, labels = self.query_scores(outputs)  # (B, Q)
        return [{"boxes": given, "labels": labels[b, q], "scores": scores[b, q]}
                for b, (given, q) in enumerate(zip(boxes, self.head.overlapping_queries(outputs, boxes), strict=True))]
