"""A synthetic COCO ground truth and noisy detections on it, shared by the evaluation and DDP tests."""

from __future__ import annotations

from typing import Any

import numpy as np

CATEGORY_IDS = (3, 7, 12)  # non-contiguous, as in COCO


def make_gt(num_images: int = 30, seed: int = 0) -> dict[str, Any]:
    """A small COCO instances dict: varying image sizes, 3 categories with non-contiguous ids, crowd regions,
    segment areas that differ from box areas (0.4..0.9 of w*h, spanning the small/medium/large buckets), and
    every fifth image without annotations."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for i in range(num_images):
        image_id = 100 + 3 * i  # non-contiguous image ids
        w, h = int(rng.integers(160, 640)), int(rng.integers(120, 480))
        images.append({"id": image_id, "width": w, "height": h, "file_name": f"{image_id:012d}.jpg"})
        if i % 5 == 4:
            continue
        for _ in range(int(rng.integers(1, 7))):
            bw = float(rng.uniform(4, w * 0.6))
            bh = float(rng.uniform(4, h * 0.6))
            x, y = float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(rng.choice(CATEGORY_IDS)),
                    "bbox": [round(x, 2), round(y, 2), round(bw, 2), round(bh, 2)],
                    "area": round(bw * bh * float(rng.uniform(0.4, 0.9)), 2),
                    "iscrowd": int(rng.random() < 0.1),
                    "segmentation": [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]],
                }
            )
    categories = [{"id": c, "name": f"class{c}", "supercategory": "thing"} for c in CATEGORY_IDS]
    return {"images": images, "annotations": annotations, "categories": categories}


def make_results(gt: dict[str, Any], seed: int = 1) -> list[dict[str, Any]]:
    """Perturbed GT boxes (some with the wrong class, some missed) with random scores, false positives,
    detections on crowd regions, some images without detections, and one image with > 100 detections."""
    rng = np.random.default_rng(seed)
    sizes = {im["id"]: (im["width"], im["height"]) for im in gt["images"]}
    skip = {im["id"] for k, im in enumerate(gt["images"]) if k % 7 == 3}  # images with no detections
    results = []
    for ann in gt["annotations"]:
        if ann["image_id"] in skip or rng.random() < 0.15:
            continue
        x, y, w, h = ann["bbox"]
        jitter = rng.normal(0, 0.08, 4) * [w, h, w, h]
        cat = ann["category_id"] if rng.random() > 0.1 else int(rng.choice(CATEGORY_IDS))
        box = [x + jitter[0], y + jitter[1], max(1.0, w + jitter[2]), max(1.0, h + jitter[3])]
        results.append({"image_id": ann["image_id"], "category_id": cat, "bbox": box, "score": float(rng.random())})
    for image_id, (w, h) in sizes.items():
        if image_id in skip:
            continue
        n_fp = 120 if image_id == gt["images"][1]["id"] else int(rng.integers(0, 4))
        for _ in range(n_fp):
            bw, bh = float(rng.uniform(2, w / 2)), float(rng.uniform(2, h / 2))
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(rng.choice(CATEGORY_IDS)),
                    "bbox": [float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh)), bw, bh],
                    "score": float(rng.random()),
                }
            )
    return results
