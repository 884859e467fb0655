"""(e) COCO bbox evaluation of 2,000 images x ~80 detections: ``vitkit.eval.coco_eval.evaluate_coco`` (the
faster-coco-eval backend, its default) against pycocotools ``COCOeval`` (evaluate + accumulate + summarize).

The data is synthetic and deterministic (:func:`synthetic_coco`, numpy ``default_rng(seed)``): COCO's 80
category ids (with their gaps), images of 320..640 px, 1..15 ground-truth boxes per image over all three area
buckets, segment ``area`` below the box area (as real COCO annotations have), ~2% crowd regions; per image ~80
detections: jittered copies of each ground-truth box (sometimes with a wrong class), then random boxes up to the
image's count, with random scores.

Both sides start from the same GT JSON file on disk and the same detection list (vitkit's copy and pycocotools'
list are separate, since pycocotools' ``loadRes`` writes into the dicts it gets; reusing its list across
repetitions lets it skip rebuilding the ``segmentation`` field, which favours the peer slightly). Timed per call:
GT file parse + index, loading the results, evaluate, accumulate, summarize. Warm-up runs use a 50-image
subset. The record says whether the 12 stats are bit-identical, their max abs difference, and whether COCO's
printed 12-line summaries are identical. The target ("identical stats") is checked bitwise.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Settings, maybe_profile, record, require, time_interleaved

WORKLOAD = "coco_eval"
COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]  # 80 ids


def synthetic_coco(num_images: int = 2000, dets_per_image: int = 80, seed: int = 0
                   ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A deterministic COCO instances dict and a results list for it.

    Args:
        num_images: images in the annotation set.
        dets_per_image: mean detections per image (each image gets dets_per_image +- 10%).
        seed: numpy seed.

    Returns:
        (ground truth dict with ``images``, ``annotations``, ``categories``; results list of
        ``{image_id, category_id, bbox [x, y, w, h], score}``).
    """
    rng = np.random.default_rng(seed)
    cats = COCO_CATEGORY_IDS
    images, anns, results = [], [], []
    ann_id = 1
    for img_id in range(1, num_images + 1):
        W, H = (int(v) for v in rng.integers(320, 641, size=2))
        images.append({"id": img_id, "width": W, "height": H, "file_name": f"{img_id:012d}.jpg"})
        gts = []
        for _ in range(int(rng.integers(1, 16))):
            # log-uniform side lengths: small (< 32^2), medium and large boxes all occur
            w = float(np.exp(rng.uniform(np.log(6), np.log(0.9 * W))))
            h = float(np.clip(w * np.exp(rng.normal(0, 0.4)), 4, 0.95 * H))
            x, y = float(rng.uniform(0, W - w)), float(rng.uniform(0, H - h))
            box = [round(x, 2), round(y, 2), round(w, 2), round(h, 2)]
            cat = int(rng.choice(cats))
            anns.append({"id": ann_id, "image_id": img_id, "category_id": cat, "bbox": box,
                         "area": round(w * h * float(rng.uniform(0.45, 0.9)), 2),
                         "iscrowd": int(rng.random() < 0.02)})
            gts.append((box, cat))
            ann_id += 1
        n_dets = int(rng.integers(int(0.9 * dets_per_image), int(1.1 * dets_per_image) + 1))
        dets = []
        for (x, y, w, h), cat in gts:
            for _ in range(int(rng.integers(1, 5))):
                jx, jy, jw, jh = rng.normal(0, 0.12, size=4).tolist()  # plain floats, as JSON results hold
                c = cat if rng.random() < 0.85 else int(rng.choice(cats))
                dw, dh = max(1.0, w * (1 + jw)), max(1.0, h * (1 + jh))
                dets.append(([x + jx * w, y + jy * h, dw, dh], c, float(rng.beta(4, 2))))
        while len(dets) < n_dets:
            w, h = float(rng.uniform(4, 0.7 * W)), float(rng.uniform(4, 0.7 * H))
            dets.append(([float(rng.uniform(0, W - w)), float(rng.uniform(0, H - h)), w, h], int(rng.choice(cats)),
                         float(rng.beta(2, 4))))
        for (x, y, w, h), c, score in dets[:n_dets]:
            results.append({"image_id": img_id, "category_id": c,
                            "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)], "score": round(score, 5)})
    gt = {"info": {"description": "vitkit synthetic benchmark set"}, "images": images, "annotations": anns,
          "categories": [{"id": c, "name": f"class_{c}", "supercategory": "none"} for c in cats]}
    return gt, results


def pycocotools_stats(gt_path: str | Path, results: list[dict[str, Any]]) -> np.ndarray:
    """The reference: pycocotools COCO + loadRes + COCOeval evaluate/accumulate/summarize -> 12 stats.
    ``results`` dicts are written into by ``loadRes`` (pycocotools' own behaviour)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats[:12], dtype=np.float64)


def vitkit_stats(gt_path: str | Path, results: list[dict[str, Any]]) -> np.ndarray:
    """vitkit's COCO evaluation (faster-coco-eval backend, the default) -> 12 stats in COCOeval's order."""
    from vitkit.eval import STAT_KEYS, evaluate_coco

    res = evaluate_coco(gt_path, results)
    return np.asarray([res.stats[k] for k in STAT_KEYS], dtype=np.float64)


def compare_stats(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Bitwise identity of two 12-stat vectors, their max abs difference, and whether COCO's printed summaries
    (3 decimals) are the same text.

    faster-coco-eval computes a precision as tp / (tp + fp), pycocotools as tp / (tp + fp + eps), so stats can
    differ by ~1e-16 (see :mod:`vitkit.eval.coco_eval`); ``stats_identical`` is strict and reports that.
    """
    from vitkit.eval import STAT_KEYS, format_summary

    def summary(x: np.ndarray) -> str:
        return format_summary(dict(zip(STAT_KEYS, x.tolist(), strict=True)))

    return {"stats_identical": bool(np.array_equal(a, b)), "stats_max_abs_diff": float(np.max(np.abs(a - b))),
            "summary_identical": summary(a) == summary(b)}


def _write_gt(gt: dict[str, Any], folder: Path, name: str) -> Path:
    path = folder / name
    path.write_text(json.dumps(gt))
    return path


def run(settings: Settings) -> list[dict[str, Any]]:
    require("pycocotools", WORKLOAD)
    require("faster_coco_eval", WORKLOAD)
    num_images, per_image = (20, 10) if settings.quick else (2000, 80)
    gt, results = synthetic_coco(num_images, per_image, settings.seed)
    warm_ids = {im["id"] for im in gt["images"][:50]}
    warm_gt = {**gt, "images": [im for im in gt["images"] if im["id"] in warm_ids],
               "annotations": [a for a in gt["annotations"] if a["image_id"] in warm_ids]}
    warm_results = [r for r in results if r["image_id"] in warm_ids]
    with tempfile.TemporaryDirectory() as tmp:
        gt_path, warm_path = _write_gt(gt, Path(tmp), "gt.json"), _write_gt(warm_gt, Path(tmp), "warm.json")
        peer_results = [dict(r) for r in results]
        peer_warm = [dict(r) for r in warm_results]
        for _ in range(settings.warmup):
            vitkit_stats(warm_path, warm_results)
            pycocotools_stats(warm_path, peer_warm)
        out: dict[str, np.ndarray] = {}

        def vitkit_fn():
            out["vitkit"] = vitkit_stats(gt_path, results)

        def peer_fn():
            out["peer"] = pycocotools_stats(gt_path, peer_results)

        fns = {"vitkit": vitkit_fn, "peer": peer_fn}
        times = time_interleaved(fns, settings.reps, warmup=0)
        maybe_profile(settings, WORKLOAD, fns, python=True)
    rec = record(WORKLOAD, times["vitkit"], "pycocotools COCOeval (evaluate+accumulate+summarize)", times["peer"],
                 backend="faster-coco-eval (vitkit default)", num_images=num_images, num_detections=len(results),
                 num_gt=len(gt["annotations"]), **compare_stats(out["vitkit"], out["peer"]),
                 vitkit_stats=out["vitkit"].tolist(), peer_stats=out["peer"].tolist())
    return [rec]
