"""Per-class precision-recall curves from a COCO bbox evaluation: :func:`coco_precision`, :func:`plot_pr_curves`."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from vitkit.eval.coco_eval import evaluate_coco, load_gt
from vitkit.eval.coco_results import load_results, validate_results
from vitkit.viz.draw import PALETTE, save


def coco_precision(gt: str | os.PathLike, results: str | os.PathLike | Sequence[Mapping[str, Any]],
                   backend: str = "pycocotools") -> tuple[np.ndarray, dict[str, Any]]:
    """COCOeval's accumulated precision array of a bbox evaluation, with what indexes it.

    Args:
        gt: COCO instances JSON; results: COCO results JSON or a list of result dicts (validated as
            :func:`vitkit.eval.coco_eval.evaluate_coco` does); backend: "pycocotools" or "faster".

    Returns:
        ``precision`` (T, R, K, A, M) (-1 where a class has no ground truth), and ``meta``: ``iou_thrs`` (T,),
        ``rec_thrs`` (R,), ``cat_ids`` (K,), ``cat_names`` (K,), ``area_rng`` (A labels), ``max_dets`` (M,).

    Raises:
        FileNotFoundError, ValueError: as :func:`~vitkit.eval.coco_eval.evaluate_coco`, and for empty results.
    """
    coco = load_gt(gt, backend)
    dets = load_results(results) if isinstance(results, str | os.PathLike) else validate_results(results)
    if not dets:
        raise ValueError("no detections: nothing to draw precision-recall curves from")
    res = evaluate_coco(coco, dets, backend=backend)
    cats = {c["id"]: c["name"] for c in coco.loadCats(res.params["cat_ids"])}
    meta = {**res.params, "cat_names": [str(cats.get(c, c)) for c in res.params["cat_ids"]]}
    return res.precision, meta


def plot_pr_curves(precision: np.ndarray, path: str | os.PathLike, rec_thrs: np.ndarray | None = None,
                   iou_thrs: np.ndarray | None = None, class_names: Sequence[str] | None = None,
                   area: int = 0, max_det: int = -1) -> Path:
    """Save a PNG of per-class precision-recall curves: left at IoU 0.5, right averaged over IoU 0.5:0.95.

    Args:
        precision: COCOeval's ``eval["precision"]`` (T, R, K, A, M), -1 where undefined.
        rec_thrs: (R,) recall thresholds (default 0:0.01:1); iou_thrs: (T,) (default 0.5:0.05:0.95).
        class_names: K names for the legend (default the class index).
        area: area-range index (0 = all); max_det: maxDets index (-1 = the largest).

    Returns:
        ``path``. Classes without ground truth (all -1) are left out; the legend gives each class's AP."""
    T, R, K = precision.shape[:3]
    rec = np.linspace(0, 1, R) if rec_thrs is None else np.asarray(rec_thrs)
    ious = np.linspace(0.5, 0.95, T) if iou_thrs is None else np.asarray(iou_thrs)
    names = [str(k) for k in range(K)] if class_names is None else list(class_names)
    t50 = int(np.argmin(np.abs(ious - 0.5)))
    fig = Figure(figsize=(11, 4.6), dpi=100, layout="constrained")
    axes = fig.subplots(1, 2)
    curves = precision[:, :, :, area, max_det]  # (T, R, K)
    for ax, title, which in ((axes[0], f"IoU={ious[t50]:.2f}", "50"), (axes[1], "IoU=0.50:0.95 (mean)", "avg")):
        drawn = 0
        for k in range(K):
            pk = curves[:, :, k]  # (T, R)
            if not (pk > -1).any():
                continue
            if which == "50":
                y = np.where(pk[t50] > -1, pk[t50], np.nan)
            else:
                valid = np.where(pk > -1, pk, np.nan)
                y = np.nanmean(valid, axis=0) if np.isfinite(valid).any() else np.full(R, np.nan)
            ap = float(np.nanmean(y)) if np.isfinite(y).any() else float("nan")
            ax.plot(rec, y, color=PALETTE[k % len(PALETTE)] if len(PALETTE) >= K else None, linewidth=1.5,
                    label=f"{names[k]} (AP {ap:.3f})")
            drawn += 1
        ax.set_title(title)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=7 if drawn > 10 else 9, loc="lower left", ncol=1 + drawn // 20)
        else:
            ax.text(0.5, 0.5, "no class with ground truth", ha="center", va="center")
    return save(fig, path)
