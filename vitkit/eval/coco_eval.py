"""COCO detection evaluation (faster-coco-eval or pycocotools COCOeval) on the original annotation file.

A metric is ``-1.0`` when undefined (no non-crowd ground truth in that area range) and ``0.0`` when ground
truth exists but no detection matches it. Also holds the DDP gather of per-rank results.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import io
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from faster_coco_eval import COCO as FasterCOCO
from faster_coco_eval import COCOeval_faster
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from vitkit.eval.coco_files import read_json
from vitkit.eval.coco_results import is_finite_real, load_results, validate_results

__all__ = ["BACKENDS", "STAT_KEYS", "CocoEvalResult", "evaluate_coco", "fill_missing_areas", "format_summary",
           "load_gt"]

logger = logging.getLogger(__name__)

STAT_KEYS: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
"""Names of COCOeval's 12 bbox stats, in COCOeval's order."""

BACKENDS: tuple[str, ...] = ("faster", "pycocotools")

# (title, IoU label, area label, maxDets) of each stats entry, exactly as COCOeval.summarize() prints them.
_SUMMARY_ROWS: tuple[tuple[str, str, str, int], ...] = (
    ("Average Precision", "0.50:0.95", "all", 100),
    ("Average Precision", "0.50", "all", 100),
    ("Average Precision", "0.75", "all", 100),
    ("Average Precision", "0.50:0.95", "small", 100),
    ("Average Precision", "0.50:0.95", "medium", 100),
    ("Average Precision", "0.50:0.95", "large", 100),
    ("Average Recall", "0.50:0.95", "all", 1),
    ("Average Recall", "0.50:0.95", "all", 10),
    ("Average Recall", "0.50:0.95", "all", 100),
    ("Average Recall", "0.50:0.95", "small", 100),
    ("Average Recall", "0.50:0.95", "medium", 100),
    ("Average Recall", "0.50:0.95", "large", 100),
)


@dataclass
class CocoEvalResult:
    """Outcome of one COCO evaluation.

    Attributes:
        stats: the 12 COCOeval stats keyed by ``STAT_KEYS``, in [0, 1], or -1.0 where undefined.
        summary: COCO's standard 12-line summary text, no trailing newline.
        per_class_ap: category id -> AP@[.5:.95] at area=all, maxDets=100; -1.0 without non-crowd ground truth.
        num_images: number of images evaluated.
        num_detections: number of result entries given.
        precision: COCOeval's ``eval["precision"]`` (T, R, K, A, M), -1 where a class has no ground truth.
        params: what indexes ``precision``: ``iou_thrs`` (T,), ``rec_thrs`` (R,), ``cat_ids`` (K,), ``area_rng``
            (A labels), ``max_dets`` (M,).
    """
    stats: dict[str, float]
    summary: str
    per_class_ap: dict[int, float] = field(default_factory=dict)
    num_images: int = 0
    num_detections: int = 0
    precision: np.ndarray | None = None
    params: dict[str, Any] = field(default_factory=dict)


def _backend_classes(backend: str) -> tuple[type, type]:
    """Return the ``(COCO, COCOeval)`` classes of a backend."""
    if backend == "faster":
        return FasterCOCO, COCOeval_faster
    if backend == "pycocotools":
        return COCO, COCOeval
    raise ValueError(f"unknown COCO eval backend {backend!r}; choose one of {BACKENDS}")


def _silent(*args: Any, **kwargs: Any) -> None:
    """A print function that prints nothing (faster-coco-eval's ``print_function`` hook)."""


def fill_missing_areas(dataset: Mapping[str, Any]) -> list[Any]:
    """Give every annotation without ``area`` the area of its box, ``w * h`` (in place).

    Annotations with an ``area`` keep it; one without a usable ``bbox`` is left alone.

    Returns:
        The ids of the annotations that got an area.
    """
    filled = []
    for ann in dataset.get("annotations") or []:
        if isinstance(ann, dict) and "area" not in ann:
            box = ann.get("bbox")
            if isinstance(box, (list, tuple)) and len(box) == 4 and all(is_finite_real(v) for v in box):
                ann["area"] = float(box[2]) * float(box[3])
                filled.append(ann.get("id"))
    return filled


def load_gt(path: str | os.PathLike, backend: str = "faster") -> Any:
    """Load a COCO instances annotation file into the backend's ``COCO`` object, silently.

    Annotations without ``area`` get ``w * h`` of their box.

    Args:
        path: instances JSON.
        backend: ``"faster"`` or ``"pycocotools"``; the object only works with the same backend.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not JSON, or lacks the ``images`` or ``categories`` lists.
    """
    coco_cls, _ = _backend_classes(backend)
    path = os.fspath(path)
    dataset = read_json(path, "annotation file")
    if not isinstance(dataset, dict) or not all(isinstance(dataset.get(k), list) for k in ("images", "categories")):
        raise ValueError(f"annotation file is not a COCO instances file (needs 'images' and 'categories'): {path}")
    fill_missing_areas(dataset)
    coco = coco_cls(print_function=_silent) if backend == "faster" else coco_cls()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def format_summary(stats: Mapping[str, float]) -> str:
    """Format 12 stats (keyed by ``STAT_KEYS``) as COCOeval.summarize() prints them: 12 lines joined by newlines."""
    lines = []
    for key, (title, iou, area, max_dets) in zip(STAT_KEYS, _SUMMARY_ROWS, strict=True):
        kind = "(AP)" if title == "Average Precision" else "(AR)"
        lines.append(
            f" {title:<18} {kind} @[ IoU={iou:<9} | area={area:>6s} | maxDets={max_dets:>3d} ] = {stats[key]:0.3f}"
        )
    return "\n".join(lines)


def _empty_results_coco(gt: Any, coco_cls: type, backend: str) -> Any:
    """A results ``COCO`` object with no detections (what ``loadRes([])`` should give)."""
    dt = coco_cls(print_function=_silent) if backend == "faster" else coco_cls()
    dt.dataset = {
        "images": list(gt.dataset["images"]),
        "categories": [dict(c) for c in gt.dataset["categories"]],
        "annotations": [],
    }
    dt.createIndex()
    return dt


def _resolve_image_ids(gt: Any, image_ids: Iterable[int] | None) -> list[int]:
    known = gt.getImgIds()
    if image_ids is None:
        return sorted(known)
    ids = sorted({int(i) for i in image_ids})
    if not ids:
        raise ValueError("image_ids is empty: there is nothing to evaluate")
    missing = set(ids).difference(known)
    if missing:
        raise ValueError(f"image_ids not in the annotation file: {sorted(missing)[:10]}")
    return ids


def _gc_paused(fn):
    """Run ``fn`` with Python's cyclic garbage collector paused (restored afterwards, also on errors)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()

    return wrapper


def _check_ids(gt: Any, dets: list[dict[str, Any]]) -> None:
    """Raise on a detection of an image outside the annotation file; log how many have an unknown category."""
    known_images = set(gt.getImgIds())
    for i, d in enumerate(dets):
        if d["image_id"] not in known_images:
            raise ValueError(f"results[{i}]: image_id {d['image_id']} is not an image of the annotation file")
    known_cats = set(gt.getCatIds())
    n_unknown = sum(d["category_id"] not in known_cats for d in dets)
    if n_unknown:
        logger.warning(
            "%d of %d detections have a category_id not in the annotation file; COCOeval ignores them",
            n_unknown,
            len(dets),
        )


@_gc_paused
def evaluate_coco(
    gt: str | os.PathLike | Any,
    results: Sequence[Mapping[str, Any]] | str | os.PathLike,
    backend: str = "faster",
    iou_type: str = "bbox",
    image_ids: Iterable[int] | None = None,
) -> CocoEvalResult:
    """Run COCOeval (bbox) on the original annotation file.

    Detections with a ``category_id`` not in the annotation file, or on images outside ``image_ids``, are ignored.

    Args:
        gt: path to a COCO instances JSON, or a ``COCO`` object of the same backend (from ``load_gt``).
        results: COCO result dicts (``image_id``, ``category_id``, ``bbox`` [x, y, w, h] in pixels of the
            original image, ``score``), or a path to a results JSON. May be empty. Not modified.
        backend: ``"faster"`` or ``"pycocotools"`` (bit-exact reference).
        iou_type: only ``"bbox"`` is supported.
        image_ids: evaluate only these images; ``None`` evaluates every image in the annotation file.

    Returns:
        ``CocoEvalResult`` with the 12 stats, the 12-line summary and per-class AP.

    Raises:
        FileNotFoundError: an input file does not exist.
        ValueError: malformed results, unknown image ids (not in the annotation file), an unknown backend or
            iou_type.
        TypeError: ``gt`` is a ``COCO`` object of the other backend.
    """
    if iou_type != "bbox":
        raise ValueError(f"iou_type {iou_type!r} is not supported; vitkit evaluates 'bbox' only")
    coco_cls, eval_cls = _backend_classes(backend)
    if isinstance(gt, (str, os.PathLike)):
        gt = load_gt(gt, backend)
    elif not isinstance(gt, coco_cls):
        raise TypeError(
            f"gt must be an annotation path or a {coco_cls.__module__}.COCO for backend {backend!r}, "
            f"got {type(gt).__module__}.{type(gt).__name__}"
        )
    dets = load_results(results) if isinstance(results, (str, os.PathLike)) else validate_results(results)

    _check_ids(gt, dets)
    img_ids = _resolve_image_ids(gt, image_ids)

    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        dt = gt.loadRes(dets) if dets else _empty_results_coco(gt, coco_cls, backend)
        if backend == "faster":
            cocoeval = eval_cls(gt, dt, iouType="bbox", print_function=_silent)
        else:
            cocoeval = eval_cls(gt, dt, iouType="bbox")
        cocoeval.params.imgIds = img_ids
        cocoeval.evaluate()
        cocoeval.accumulate()
        summary_out = io.StringIO()
        with contextlib.redirect_stdout(summary_out):
            cocoeval.summarize()

    stats = {key: float(v) for key, v in zip(STAT_KEYS, cocoeval.stats[: len(STAT_KEYS)], strict=True)}
    # faster-coco-eval sends its summary to print_function (14 lines: + AR@0.5, AR@0.75): format the standard 12.
    summary = summary_out.getvalue().rstrip("\n") if backend == "pycocotools" else format_summary(stats)
    return CocoEvalResult(
        stats=stats,
        summary=summary,
        per_class_ap=_per_class_ap(cocoeval),
        num_images=len(img_ids),
        num_detections=len(dets),
        precision=np.asarray(cocoeval.eval["precision"]),
        params=_params(cocoeval),
    )


def _params(cocoeval: Any) -> dict[str, Any]:
    p = cocoeval.params
    return {"iou_thrs": np.asarray(p.iouThrs), "rec_thrs": np.asarray(p.recThrs), "cat_ids": list(p.catIds),
            "area_rng": list(p.areaRngLbl), "max_dets": list(p.maxDets)}


def _per_class_ap(cocoeval: Any) -> dict[int, float]:
    """AP@[.5:.95] per category at area=all, maxDets=100, from precision [T, R, K, A, M]."""
    p = cocoeval.params
    precision = np.asarray(cocoeval.eval["precision"])  # (T, R, K, A, M)
    a = list(p.areaRngLbl).index("all")
    m = list(p.maxDets).index(100) if 100 in p.maxDets else len(p.maxDets) - 1
    out = {}
    for k, cat_id in enumerate(p.catIds):
        s = precision[:, :, k, a, m]  # (T, R)
        valid = s[s > -1]
        out[int(cat_id)] = float(np.mean(valid)) if valid.size else -1.0
    return out
