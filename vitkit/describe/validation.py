"""The describe metrics of a validation split, logged by :class:`~vitkit.describe.module.DescribeModule`.

``describe_mAP`` (:func:`~vitkit.eval.describe_map.evaluate_describe`, class-agnostic; annotations without a
phrase are ignored like crowd regions), ``region_CIDEr`` (CIDEr-D of given-box captions against their phrases, NaN
without any phrase) and ``region_attr_acc`` (share of correctly detected objects, IoU >= 0.5 and same category,
whose caption equals their phrase after :func:`normalize_phrase`; 0 when none).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_convert, box_iou

from vitkit.captioning.tokenizer import CaptionTokenizer
from vitkit.describe.model import DescribeModel, Regions
from vitkit.describe.regions import RegionReferences
from vitkit.eval.cider import CiderD
from vitkit.eval.describe_map import RegionGroundTruth, RegionPredictions, evaluate_describe
from vitkit.eval.ptb_tokenize import python_ptb_tokenize

__all__ = ["attribute_accuracy", "ground_truth_regions", "match_detections", "normalize_phrase", "per_rank_cap",
           "region_cider", "region_metrics", "region_records"]


def normalize_phrase(text: str) -> str:
    """Lower-cased, whitespace runs as one space, no leading or trailing space (the attribute-match comparison)."""
    return " ".join(text.lower().split())


def match_detections(det_boxes: Any, det_scores: Any, det_labels: Any, gt_boxes: Any, gt_labels: Any,
                     iou_threshold: float = 0.5) -> list[tuple[int, int]]:
    """Greedy one-to-one matching of detections to ground-truth objects of the same class.

    Detections by decreasing score (ties in input order) each take the untaken same-label box of highest IoU,
    if that IoU is at least ``iou_threshold``.

    Args:
        det_boxes: (M, 4) xyxy boxes; det_scores: (M,); det_labels: (M,) class ids.
        gt_boxes: (N, 4) xyxy boxes in the same units; gt_labels: (N,) class ids of the same kind.

    Returns:
        (detection index, ground-truth index) pairs, in the order they were made.
    """
    det = torch.as_tensor(np.asarray(det_boxes, dtype=np.float64)).reshape(-1, 4)  # (M, 4)
    gt = torch.as_tensor(np.asarray(gt_boxes, dtype=np.float64)).reshape(-1, 4)  # (N, 4)
    if not len(det) or not len(gt):
        return []
    iou = box_iou(det, gt)  # (M, N)
    same = torch.as_tensor(np.asarray(det_labels))[:, None] == torch.as_tensor(np.asarray(gt_labels))[None, :]
    iou = torch.where(same, iou, torch.full_like(iou, -1.0))  # another class never matches
    order = torch.as_tensor(np.asarray(det_scores, dtype=np.float64)).argsort(descending=True, stable=True)
    pairs = []
    for d in order.tolist():
        j = int(iou[d].argmax())
        if float(iou[d, j]) >= iou_threshold:
            pairs.append((d, j))
            iou[:, j] = -1.0  # taken
    return pairs


def attribute_accuracy(captions: Sequence[str], phrases: Sequence[str | None],
                       pairs: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """(right, judged): of the matched ``pairs`` whose ground truth has a phrase (None: not judged), how many
    detections' captions equal it after :func:`normalize_phrase`.
    """
    judged = [(d, g) for d, g in pairs if phrases[g] is not None]
    right = sum(normalize_phrase(captions[d]) == normalize_phrase(phrases[g]) for d, g in judged)
    return right, len(judged)


def ground_truth_regions(ref: RegionReferences) -> RegionGroundTruth:
    """The describe-mAP ground truth of one image: an annotation without a phrase becomes a crowd region (ignored,
    see the module docstring), with an empty caption that is never read."""
    missing = np.array([c is None for c in ref.captions], dtype=bool)
    return RegionGroundTruth(ref.boxes, [c or "" for c in ref.captions], iscrowd=ref.iscrowd | missing)


def _to_xywh_pixels(boxes: Tensor, orig_size: Tensor) -> list[list[float]]:
    """(n, 4) normalised cxcywh -> COCO xywh pixels of the original image (``orig_size`` [h, w])."""
    h, w = (float(v) for v in orig_size)
    xyxy = box_convert(boxes.float().cpu(), "cxcywh", "xyxy") * torch.tensor([w, h, w, h])  # (n, 4) px
    return torch.cat((xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]), dim=1).tolist()


def _regions(captioner: DescribeModel, outputs: dict, found: list[dict[str, Tensor]],
             given: list[Tensor]) -> Regions:
    """The detections' regions (each its query's state and box, as :meth:`DescribeModel.describe` builds them)
    followed by the given boxes' (:meth:`RegionCaptionHead.regions_for_boxes`), of the first ``len(found)`` images."""
    given_regions = captioner.head.regions_for_boxes(outputs, given)
    detected = captioner.detection_regions(outputs, found)
    return Regions(torch.cat([detected.batch, given_regions.batch]),
                   torch.cat([detected.boxes, given_regions.boxes.to(outputs["pred_boxes"].dtype)]),
                   torch.cat([detected.hidden, given_regions.hidden]))


@torch.no_grad()
def region_records(captioner: DescribeModel, tokenizer: CaptionTokenizer, outputs: dict, targets: list[dict],
                   label_to_cat_id: Sequence[int] | None, threshold: float,
                   max_detections: int) -> list[dict[str, Any]]:
    """Region captions of the first ``len(targets)`` images of a validation batch, one record per image.

    Args:
        captioner: the detector and head (in eval mode).
        tokenizer: turns caption ids into text.
        outputs: :func:`~vitkit.describe.model.detector_outputs` of the batch (``features``, ``token_size``).
        targets: validation targets (``image_id``, ``orig_size`` [h, w], ``boxes`` (n, 4) normalised cxcywh,
            ``ann_ids``, ``captions``, ``has_caption``).
        label_to_cat_id: contiguous label -> COCO category id (None: the labels are the ids).
        threshold, max_detections: the detections kept per image.

    Returns:
        Per image: ``image_id``; the detections' ``boxes`` (COCO xywh px), ``scores``, ``category_ids`` and
        ``captions``; ``given``: ``[annotation id, caption, phrase]`` of each ground-truth box with a phrase.
    """
    found = captioner.detections(outputs, threshold, max_detections)[:len(targets)]
    given = [t["boxes"][t["has_caption"]].to(outputs["pred_boxes"].device) for t in targets]
    regions = _regions(captioner, outputs, found, given)
    texts: list[str] = []
    if len(regions.batch):
        ids, _ = captioner.head.text.generate_from_memory(captioner.head.memory(outputs, regions), method="greedy")
        texts = tokenizer.decode_batch(ids.cpu())  # (R, T) -> R captions
    counts = [len(d["queries"]) for d in found]
    det_texts, given_texts = texts[:sum(counts)], texts[sum(counts):]
    records, start, g_start = [], 0, 0
    for t, det, box in zip(targets, found, given, strict=True):
        labels = det["labels"].cpu().tolist()
        phrases = [c for c, has in zip(t["captions"], t["has_caption"].tolist(), strict=True) if has]
        ann_ids = t["ann_ids"][t["has_caption"]].tolist()
        mine = given_texts[g_start:g_start + len(box)]
        records.append({
            "image_id": int(t["image_id"]),
            "boxes": _to_xywh_pixels(det["boxes"], t["orig_size"]),
            "scores": det["scores"].float().cpu().tolist(),
            "category_ids": [label_to_cat_id[k] for k in labels] if label_to_cat_id is not None else labels,
            "captions": det_texts[start:start + len(labels)],
            "given": [[a, c, p] for a, c, p in zip(ann_ids, mine, phrases, strict=True)],
        })
        start, g_start = start + len(labels), g_start + len(box)
    return records


def region_cider(given: Sequence[tuple[Any, str, str]]) -> float:
    """CIDEr-D of (key, caption, phrase) triples, each phrase the one reference of its own document; NaN if none."""
    if not given:
        return float("nan")
    cider = CiderD({key: [python_ptb_tokenize(phrase)] for key, _, phrase in given})
    scores = cider.score([python_ptb_tokenize(c) for _, c, _ in given], [key for key, _, _ in given])
    return float(np.mean(scores))


def _image_attribute_counts(record: Mapping[str, Any], ref: RegionReferences) -> tuple[int, int]:
    """(right, judged) of one image: its detections matched to its non-crowd annotations (xywh -> xyxy)."""
    keep = np.flatnonzero(~ref.iscrowd)
    gt = ref.boxes[keep].copy()  # (n, 4) xywh px
    gt[:, 2:] += gt[:, :2]
    det = np.asarray(record["boxes"], dtype=np.float64).reshape(-1, 4)
    det[:, 2:] += det[:, :2]
    pairs = match_detections(det, record["scores"], record["category_ids"], gt, ref.category_ids[keep])
    return attribute_accuracy(record["captions"], [ref.captions[k] for k in keep], pairs)


def region_metrics(records: Sequence[Mapping[str, Any]],
                   references: Mapping[int, RegionReferences]) -> dict[str, Any]:
    """The describe metrics of a validation split.

    Args:
        records: :func:`region_records` of every evaluated image (each image once).
        references: image id -> its annotations; every record's image.

    Returns:
        ``describe_mAP``, ``region_CIDEr`` and ``region_attr_acc`` (floats), ``attr_counts`` (right, judged) and
        ``describe_map`` (the whole :func:`evaluate_describe` result).
    """
    ground_truth = {r["image_id"]: ground_truth_regions(references[r["image_id"]]) for r in records}
    predictions = {r["image_id"]: RegionPredictions(np.asarray(r["boxes"], dtype=np.float64).reshape(-1, 4),
                                                    r["scores"], r["captions"]) for r in records}
    result = evaluate_describe(ground_truth, predictions) if records else {"map": float("nan")}
    right = judged = 0
    for r in records:
        a, b = _image_attribute_counts(r, references[r["image_id"]])
        right, judged = right + a, judged + b
    given = [((r["image_id"], ann_id), caption, phrase) for r in records for ann_id, caption, phrase in r["given"]]
    return {"describe_mAP": float(result["map"]), "region_CIDEr": region_cider(given),
            "region_attr_acc": right / judged if judged else 0.0, "attr_counts": (right, judged),
            "describe_map": result}


def per_rank_cap(max_images: int | None, world_size: int) -> float:
    """Images a rank captions per validation: ``max_images`` split over the ranks (rounded up); inf for None."""
    return math.inf if max_images is None else math.ceil(max_images / max(1, world_size))
