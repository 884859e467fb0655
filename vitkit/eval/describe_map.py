"""The describe mAP: DenseCap's dense-captioning mAP (Johnson et al., CVPR 2016).

Per image, ground-truth boxes overlapping by IoU >= ``merge_iou`` are merged greedily (mean box, all captions);
predictions, by decreasing score (stable), are assigned the merged region of largest IoU, which only the first
such prediction takes (``ok``). At IoU threshold ``u`` and METEOR threshold ``m`` a prediction is a true positive
iff ``iou >= u and ok and meteor > m``; recall is over the merged non-crowd regions of all images. AP is the mean
over the 100 recall points 0, 0.01, ..., 0.99 (float64 sums) of the highest precision at recall >= t; mAP is the
mean over IoU (0.3, 0.4, 0.5, 0.6, 0.7) x METEOR (0, 0.05, 0.1, 0.15, 0.2, 0.25). Crowd regions are never merged,
counted or taken; a prediction below ``u`` that lies inside a crowd region by ``u`` is ignored. Boxes are pixels.
With no ground-truth region every AP is NaN (with a warning).
"""

from __future__ import annotations

import contextlib
import string
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from pycocoevalcap.meteor.meteor import Meteor

from vitkit.eval.caption_metrics import JAVA_HINT, warn_once
from vitkit.eval.ptb_tokenize import java_available

__all__ = ["FALLBACK_BACKEND", "IOU_THRESHOLDS", "METEOR_THRESHOLDS", "RegionGroundTruth", "RegionPredictions",
           "evaluate_describe", "java_meteor", "meteor_fallback", "normalize_caption"]

IOU_THRESHOLDS: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)
METEOR_THRESHOLDS: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25)
FALLBACK_BACKEND = "fallback-unigram-fmean"
MeteorFn = Callable[[list[str], list[list[str]]], Sequence[float]]
"""(candidates, references per candidate) -> one score in [0, 1] per candidate."""

# (100,) the values of t in the reference's ``for t=0,1,0.01``: 0.01 added up in float64 (sequential cumsum)
_RECALL_POINTS = np.concatenate([[0.0], np.cumsum(np.full(99, 0.01))])


def _as_array(x: Any, dtype: Any) -> np.ndarray:
    return np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=dtype)


def _as_boxes(x: Any, what: str) -> np.ndarray:
    boxes = _as_array(x, np.float64)
    boxes = boxes.reshape(0, 4) if boxes.size == 0 else boxes
    if boxes.ndim != 2 or boxes.shape[1] != 4 or not np.isfinite(boxes).all():
        raise ValueError(f"{what} must be finite numbers of shape (N, 4), got shape {boxes.shape}")
    return boxes


def _as_captions(x: Sequence[str], n: int, what: str) -> tuple[str, ...]:
    if isinstance(x, str) or not all(isinstance(c, str) for c in x):
        raise TypeError(f"{what} must be a sequence of caption strings")
    if len(x) != n:
        raise ValueError(f"{what} has {len(x)} captions for {n} boxes")
    return tuple(x)


@dataclass(frozen=True)
class RegionGroundTruth:
    """Ground-truth regions of one image.

    Args:
        boxes: (N, 4) boxes in pixels, COCO xywh unless ``evaluate_describe(box_format="xyxy")``; N may be 0.
        captions: N caption strings, one per box.
        iscrowd: (N,) crowd flags (COCO's ``iscrowd``); None = no crowd region.
    """

    boxes: Any
    captions: Sequence[str]
    iscrowd: Any = None

    def __post_init__(self) -> None:
        boxes = _as_boxes(self.boxes, "RegionGroundTruth.boxes")
        crowd = np.zeros(len(boxes), bool) if self.iscrowd is None else _as_array(self.iscrowd, bool).reshape(-1)
        if len(crowd) != len(boxes):
            raise ValueError(f"RegionGroundTruth.iscrowd has {len(crowd)} flags for {len(boxes)} boxes")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "captions", _as_captions(self.captions, len(boxes), "RegionGroundTruth.captions"))
        object.__setattr__(self, "iscrowd", crowd)


@dataclass(frozen=True)
class RegionPredictions:
    """Predicted regions of one image.

    Args:
        boxes: (M, 4) boxes in pixels, same convention as the ground truth; M may be 0.
        scores: (M,) confidences; higher ranks first (only the order matters).
        captions: M caption strings.
    """

    boxes: Any
    scores: Any
    captions: Sequence[str]

    def __post_init__(self) -> None:
        boxes = _as_boxes(self.boxes, "RegionPredictions.boxes")
        scores = _as_array(self.scores, np.float64).reshape(-1)
        if len(scores) != len(boxes) or not np.isfinite(scores).all():
            raise ValueError(f"RegionPredictions.scores must be {len(boxes)} finite numbers, got {scores}")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "captions", _as_captions(self.captions, len(boxes), "RegionPredictions.captions"))


def _to_xyxy(boxes: np.ndarray, box_format: str) -> np.ndarray:
    """(N, 4) boxes -> (N, 4) corners x1, y1, x2, y2 in pixels."""
    return boxes if box_format == "xyxy" else np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def _overlaps(a: np.ndarray, b: np.ndarray, crowd: bool = False) -> np.ndarray:
    """(M, 4) x (N, 4) xyxy -> (M, N): IoU, or with ``crowd`` intersection / area of ``a`` (COCO's crowd IoU)."""
    wh = np.clip(np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2]), 0, None)
    inter = wh[..., 0] * wh[..., 1]  # (M, N)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)  # (M,)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)  # (N,)
    denom = np.broadcast_to(area_a[:, None], inter.shape) if crowd else area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, denom, out=np.zeros_like(inter), where=denom > 0)


def _merge_groups(boxes: np.ndarray, merge_iou: float | None) -> list[np.ndarray]:
    """Reference grouping of (N, 4) xyxy boxes: indices of each merged region, in the order they are formed."""
    if merge_iou is None:
        return [np.array([i]) for i in range(len(boxes))]
    good = _overlaps(boxes, boxes) >= merge_iou  # (N, N)
    np.fill_diagonal(good, True)  # the reference sets IoU(i, i) = 1, even for an empty box
    groups = []
    while good.any():
        top = int(np.argmax(good.sum(axis=0)))  # the box with most partners; the first on ties
        members = np.flatnonzero(good[top])
        groups.append(members)
        good[members, :] = False
        good[:, members] = False
    return groups


class _Match(NamedTuple):
    """Step 2's outcome for one prediction."""

    score: float  # its confidence
    iou: float  # IoU with its assigned region (0 when none)
    ok: bool  # the first prediction to take that region
    crowd: float  # COCO crowd overlap with its best crowd region (0 when none)
    candidate: str  # its caption
    references: list[str]  # the assigned region's captions ([] when none)


def _match_image(gt: RegionGroundTruth, pred: RegionPredictions, merge_iou: float | None,
                 box_format: str) -> tuple[list[_Match], int]:
    """Steps 1-2 for one image: its predictions' matches, by decreasing score, and its number of merged regions."""
    gt_boxes = _to_xyxy(gt.boxes, box_format)
    normal = np.flatnonzero(~gt.iscrowd)
    groups = [normal[g] for g in _merge_groups(gt_boxes[normal], merge_iou)]
    regions = np.array([gt_boxes[g].mean(axis=0) for g in groups]).reshape(-1, 4)  # (R, 4)
    order = np.argsort(-pred.scores, kind="stable")
    boxes = _to_xyxy(pred.boxes, box_format)[order]  # (M, 4)
    iou = _overlaps(boxes, regions)  # (M, R)
    crowd = _overlaps(boxes, gt_boxes[gt.iscrowd], crowd=True).max(axis=1, initial=0.0)  # (M,)
    taken = np.zeros(len(regions), bool)
    matches = []
    for d, k in enumerate(order):
        j = int(np.argmax(iou[d])) if len(regions) else -1
        if j < 0 or iou[d, j] <= 0:  # overlaps no region: takes nothing
            matches.append(_Match(pred.scores[k], 0.0, False, crowd[d], pred.captions[k], []))
            continue
        matches.append(_Match(pred.scores[k], iou[d, j], not taken[j], crowd[d], pred.captions[k],
                              [gt.captions[i] for i in groups[j]]))
        taken[j] = True
    return matches, len(regions)


# --------------------------------------------------------------------------------------------- METEOR


_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_caption(caption: str) -> str:
    """DenseCap's caption preprocessing: lower-cased, ASCII punctuation deleted (``man's`` -> ``mans``), one line."""
    return " ".join(caption.lower().translate(_PUNCTUATION).split())


def java_meteor(candidates: list[str], references: list[list[str]]) -> list[float]:
    """METEOR 1.5 (pycocoevalcap's Java scorer) of each candidate against its references, in one Java process.

    Args:
        candidates: K caption strings (raw text; normalised by :func:`normalize_caption`).
        references: K lists of reference captions (at least one each).

    Returns:
        K scores in [0, 1].

    Raises:
        OSError: Java could not be started.
        RuntimeError: the METEOR process failed or answered something other than scores.
    """
    if not candidates:
        return []
    meteor = Meteor()
    try:
        gts = {k: [normalize_caption(r) for r in refs] for k, refs in enumerate(references)}
        res = {k: [normalize_caption(c)] for k, c in enumerate(candidates)}
        _, scores = meteor.compute_score(gts, res)
        return [float(s) for s in scores]
    except (OSError, ValueError) as exc:
        meteor.meteor_p.kill()  # then its stderr ends
        stderr = meteor.meteor_p.stderr.read().decode(errors="replace").strip()[-600:]
        raise RuntimeError(f"the METEOR Java process failed ({type(exc).__name__}: {exc}); stderr: {stderr!r}") from exc
    finally:
        if meteor.lock.locked():  # pycocoevalcap keeps it on errors, and its __del__ would then hang
            meteor.lock.release()
        with contextlib.suppress(OSError, ValueError):
            meteor.meteor_p.stdin.close()
        meteor.meteor_p.kill()
        meteor.meteor_p.wait()


def _align_unigrams(hyp: list[str], ref: list[str]) -> tuple[int, int]:
    """Greedy exact-match alignment: (matched unigrams, chunks); a match extends the previous chunk where it can."""
    free: list[str | None] = list(ref)  # None = reference word already matched
    matches = chunks = 0
    last = -1  # reference position of the previous hypothesis word's match, -1 when it had none
    for word in hyp:
        if last >= 0 and last + 1 < len(free) and free[last + 1] == word:
            j = last + 1  # adjacent in both: same chunk
        elif word in free:
            j = free.index(word)
            chunks += 1
        else:
            last = -1
            continue
        free[j], last, matches = None, j, matches + 1
    return matches, chunks


def meteor_fallback(candidate: str, references: Sequence[str]) -> float:
    """A pure-Python stand-in for METEOR: exact word matches, best reference; not comparable with METEOR 1.5.

    Returns:
        A score in [0, 1), 0 iff no word matches.
    """
    hyp = normalize_caption(candidate).split()
    best = 0.0
    for reference in references:
        ref = normalize_caption(reference).split()
        m, chunks = _align_unigrams(hyp, ref)
        if m:
            p, r = m / len(hyp), m / len(ref)
            best = max(best, 10 * p * r / (r + 9 * p) * (1 - 0.5 * (chunks / m) ** 3))
    return best


def _score_pairs(meteor: str | MeteorFn, candidates: list[str],
                 references: list[list[str]]) -> tuple[list[float], str]:
    """(scores, backend name) of the pairs under the ``meteor`` choice of :func:`evaluate_describe`."""
    if callable(meteor):
        scores = [float(s) for s in meteor(candidates, references)]
        if len(scores) != len(candidates):
            raise ValueError(f"the METEOR function returned {len(scores)} scores for {len(candidates)} pairs")
        return scores, f"custom:{getattr(meteor, '__name__', type(meteor).__name__)}"
    if meteor not in ("auto", "java", "fallback"):
        raise ValueError(f"meteor must be 'auto', 'java', 'fallback' or a function, got {meteor!r}")
    java = meteor != "fallback" and java_available()
    if meteor == "java" and not java:
        raise RuntimeError(f"meteor='java', but Java was not found on PATH. {JAVA_HINT}")
    if meteor == "auto" and not java:
        warn_once("describe-map-no-java", f"describe mAP METEOR: Java was not found on PATH, so the scores use "
                                           f"{FALLBACK_BACKEND} (not comparable with METEOR). {JAVA_HINT}")
    if java:
        try:
            return java_meteor(candidates, references), "java"
        except (OSError, RuntimeError) as exc:
            if meteor == "java":
                raise
            warnings.warn(f"describe mAP METEOR: Java METEOR failed ({exc}); the scores use {FALLBACK_BACKEND} "
                          "(not comparable with METEOR)", stacklevel=3)
    return [meteor_fallback(c, r) for c, r in zip(candidates, references, strict=True)], FALLBACK_BACKEND


def _average_precision(tp: np.ndarray, fp: np.ndarray, npos: int) -> float:
    """Step 5 on (K,) bool flags in rank order (ignored predictions already removed); NaN when ``npos`` is 0."""
    if npos == 0:
        return float("nan")
    if len(tp) == 0:
        return 0.0
    tps, fps = np.cumsum(tp, dtype=np.float64), np.cumsum(fp, dtype=np.float64)
    recall, precision = tps / npos, tps / (tps + fps)  # (K,), recall non-decreasing
    best_after = np.maximum.accumulate(precision[::-1])[::-1]  # (K,) highest precision from rank k on
    first = np.searchsorted(recall, _RECALL_POINTS, side="left")  # (100,) first rank with recall >= t
    reached = first < len(recall)
    return float(np.where(reached, best_after[np.minimum(first, len(recall) - 1)], 0.0).mean())


def evaluate_describe(ground_truth: Mapping[Any, RegionGroundTruth], predictions: Mapping[Any, RegionPredictions],
                      meteor: Literal["auto", "java", "fallback"] | MeteorFn = "auto", merge_iou: float | None = 0.7,
                      box_format: Literal["xywh", "xyxy"] = "xywh") -> dict[str, Any]:
    """The describe mAP of region predictions: DenseCap's dense-captioning mAP.

    Args:
        ground_truth: image id -> its regions; every image listed is evaluated.
        predictions: image id -> its predictions; every id must be in ``ground_truth``.
        meteor: caption scorer: ``"java"`` (raises without Java), ``"fallback"`` (:func:`meteor_fallback`),
            ``"auto"`` (Java if on PATH, else the fallback with one warning), or a function
            (candidates, references) -> scores like :func:`java_meteor`.
        merge_iou: merge ground-truth boxes overlapping by this IoU (0.7 = the reference); None = no merging.
        box_format: ``"xywh"`` (COCO, pixels) or ``"xyxy"`` (corners, pixels), for all boxes.

    Returns:
        ``map``: mean of the 30 APs; ``ap``: ``"iou{u}_meteor{m}"`` (e.g. ``"iou0.5_meteor0.05"``) -> AP;
        ``det_map`` and ``det_ap`` (``"iou{u}"`` -> AP): the detection AP, captions ignored; ``meteor_backend``:
        ``"java"``, ``"fallback-unigram-fmean"`` or ``"custom:<name>"``; ``num_images``, ``num_regions`` (merged,
        non-crowd) and ``num_predictions``. APs are in [0, 1], NaN when there is no region at all.
    """
    if box_format not in ("xywh", "xyxy"):
        raise ValueError(f"box_format must be 'xywh' or 'xyxy', got {box_format!r}")
    unknown = [image_id for image_id in predictions if image_id not in ground_truth]
    if unknown:
        raise ValueError(f"predictions for {len(unknown)} image id(s) missing from ground_truth, e.g. {unknown[:5]}")
    empty = RegionPredictions(np.zeros((0, 4)), np.zeros(0), [])
    matches, npos = [], 0
    for image_id, gt in ground_truth.items():
        image_matches, n = _match_image(gt, predictions.get(image_id, empty), merge_iou, box_format)
        matches += image_matches
        npos += n
    scores, iou, crowd = (np.array([getattr(m, f) for m in matches], np.float64) for f in ("score", "iou", "crowd"))
    ok = np.array([m.ok for m in matches], bool)
    candidates, references = [m.candidate for m in matches], [m.references for m in matches]

    todo = np.flatnonzero(ok & (iou >= min(IOU_THRESHOLDS)))  # the only pairs that can be true positives
    pair_scores, backend = _score_pairs(meteor, [candidates[k] for k in todo], [references[k] for k in todo])
    meteor_scores = np.full(len(scores), -np.inf)  # never above a threshold
    meteor_scores[todo] = pair_scores

    rank = np.argsort(-scores, kind="stable")
    iou, ok, crowd, meteor_scores = iou[rank], ok[rank], crowd[rank], meteor_scores[rank]
    if npos == 0:
        warnings.warn("evaluate_describe: the ground truth holds no (non-crowd) region, so AP is undefined (NaN)",
                      stacklevel=2)
    ap, det_ap = {}, {}
    for u in IOU_THRESHOLDS:
        hit = iou >= u
        kept = hit | (crowd < u)  # not matched by u, but inside a crowd region by u: ignored
        det_ap[f"iou{u:g}"] = _average_precision((hit & ok)[kept], ~(hit & ok)[kept], npos)
        for m in METEOR_THRESHOLDS:
            tp = hit & ok & (meteor_scores > m)
            ap[f"iou{u:g}_meteor{m:g}"] = _average_precision(tp[kept], ~tp[kept], npos)
    return {"map": float(np.mean(list(ap.values()))), "ap": ap, "det_map": float(np.mean(list(det_ap.values()))),
            "det_ap": det_ap, "meteor_backend": backend, "num_images": len(ground_truth), "num_regions": npos,
            "num_predictions": len(scores)}
