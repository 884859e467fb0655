"""Detect objects in every image of a folder into a COCO results file, optionally drawing the boxes.

Image ids come from ``annotations`` (looked up by ``file_name``; unknown files fail) or number the sorted files
1, 2, ... (unreadable ones included). A sidecar ``<out stem>.images.json`` holds ``{"images": [{"id", "file_name",
"width", "height"}]}`` (plus ``"error"``, and ``"id": null`` for files unknown to ``annotations``). Results are
``{"image_id", "category_id", "bbox": [x, y, w, h] px of the upright image, "score"}``, sorted by image id then
score descending, written atomically at the end. Drawn pictures keep the relative path; inputs other than
``.png``/``.jpg``/``.jpeg`` get ``.png`` appended.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vitkit.data.folder import ImageFolder, check_picture_options, folder_image_ids
from vitkit.data.folder_runner import FolderOutput, FolderSummary, FolderTask, output_file, run_folder
from vitkit.detection.predictor import Detector
from vitkit.eval.coco_results import detection_entries
from vitkit.utils.files import atomic_write
from vitkit.viz.draw import draw_file


class CocoResultsOutput(FolderOutput):
    """The COCO results file ``out`` and its images sidecar, both written by :meth:`close`; ``image_ids`` maps
    file -> id (files without one fail, naming ``annotations``), ``label_to_cat_id`` label -> category id (None:
    the labels)."""
    def __init__(self, out: Path, image_ids: dict[str, int], label_to_cat_id: list[int] | None,
                 annotations: str | os.PathLike | None) -> None:
        super().__init__(out, out.with_name(f"{out.stem}.images.json"))  # dets.json -> dets.images.json
        self.image_ids, self.cat_ids, self.annotations = image_ids, label_to_cat_id, annotations
        self.files: list[str] = []
        self.results: list[dict[str, Any]] = []
        self.sizes: dict[str, tuple[int, int]] = {}  # file -> decoded (h, w)
        self.failures: dict[str, str] = {}

    def open(self, files: list[str], overwrite: bool) -> tuple[list[int], dict[str, str]]:
        """Every file with an image id is run; the others fail ("not in the annotation file")."""
        self.files = files
        self.failures = {f: f"not in the annotation file {self.annotations} (no image id for its boxes)"
                         for f in files if f not in self.image_ids}
        return [i for i, f in enumerate(files) if f in self.image_ids], dict(self.failures)

    def write(self, records: list[dict[str, Any]]) -> None:
        """Keep the batch's detections (COCO entries) and the files' sizes and errors for :meth:`close`."""
        for r in records:
            if "size" in r:
                self.sizes[r["file"]] = r["size"]
            if "error" in r:
                self.failures[r["file"]] = r["error"]
            else:
                self.results.extend(detection_entries(r["boxes"], r["scores"], r["labels"], self.image_ids[r["file"]],
                                                      self.cat_ids))

    def close(self) -> None:
        """Write the results (by image id, then score descending) and the sidecar, each atomically."""
        atomic_write(self.path, json.dumps(sorted(self.results, key=lambda r: (r["image_id"], -r["score"]))).encode())
        images = []
        for f in self.files:
            entry: dict[str, Any] = {"id": self.image_ids.get(f), "file_name": f}
            if f in self.sizes:
                entry.update(width=int(self.sizes[f][1]), height=int(self.sizes[f][0]))
            if f in self.failures:
                entry["error"] = self.failures[f]
            images.append(entry)
        atomic_write(self.failures_file, json.dumps({"images": images}).encode("utf-8"))


def detection_task(detector: Detector, score_threshold: float = 0.5,
                   draw: Callable[[dict[str, Any]], str | None] | None = None) -> FolderTask:
    """Detection as a :class:`~vitkit.data.folder_runner.FolderTask`: records ``{"file", "size", "boxes" (K, 4) xyxy
    px, "scores" (K,), "labels" (K,)}`` (CPU tensors, detections scoring at least ``score_threshold``); ``draw``:
    a record -> None or why drawing failed."""
    device = next(detector.model.parameters()).device

    def predict(batch: dict[str, Any]) -> list[dict[str, Any]]:
        target = torch.tensor(batch["sizes"], device=device)  # (B, 2) [h, w]
        with torch.no_grad():
            dets = detector.postprocess(detector.run(batch["images"], batch["mask"]), target)
        return [{"file": f, "size": size, **{k: v[d["scores"] >= score_threshold].cpu() for k, v in d.items()}}
                for f, size, d in zip(batch["files"], batch["sizes"], dets, strict=True)]

    return FolderTask("detected", "detecting", predict, draw, items=("boxes", "boxes"))


def detect_folder(detector: Detector, folder: str | os.PathLike, out: str | os.PathLike, *,
                  annotations: str | os.PathLike | None = None, score_threshold: float = 0.5, batch_size: int = 8,
                  recursive: bool = True, num_workers: int = 0, progress: bool = False,
                  draw_dir: str | os.PathLike | None = None) -> FolderSummary:
    """Detect the images of ``folder`` into a COCO results file ``out`` (see the module docstring).

    Args:
        detector: from :func:`vitkit.load` (on the device to run on).
        annotations: a COCO instances file whose ``images`` give the image ids (and orientation), or None to
            number the files.
        score_threshold: keep detections scoring at least this.
        batch_size, recursive, num_workers, progress: as :func:`vitkit.data.folder_runner.run_folder`.
        draw_dir: also write each image with its boxes drawn under this folder.

    Returns:
        A :class:`~vitkit.data.folder_runner.FolderSummary` (``items``: boxes; ``failures_file``: the sidecar).

    Raises:
        FileNotFoundError / NotADirectoryError: ``folder`` (or ``annotations``) is missing, or a file.
        ValueError: a bad option, ``out`` is a folder, or ``annotations`` is not a COCO annotation file.
    """
    out = output_file(out, "dets.json")
    check_picture_options(folder, draw_dir, score_threshold, "score threshold")
    dataset = ImageFolder(folder, transform=detector.preprocessing, recursive=recursive)
    image_ids, dataset.size_hints, cats = folder_image_ids([p.as_posix() for p in dataset.files], annotations)
    output = CocoResultsOutput(out, image_ids, detector.label_to_cat_id, annotations)

    def draw(r: dict[str, Any]) -> str | None:
        labels = r["labels"].tolist()
        return draw_file(folder, r["file"], dataset.size_hints.get(r["file"]), r["boxes"], labels,
                         detector.label_text(labels), r["scores"].tolist(), draw_dir)

    unknown = sorted(set(detector.label_to_cat_id or range(detector.model.num_classes)) - (cats or set()))
    warnings = [f"the detector's category ids {unknown} are not categories of {annotations}; COCOeval ignores their "
                "detections (was the model trained on this dataset?)"] if annotations is not None and unknown else []
    detector.eval()
    task = detection_task(detector, score_threshold, draw if draw_dir is not None else None)
    return run_folder(task, dataset, output, batch_size=batch_size, num_workers=num_workers, progress=progress,
                      pin_memory=next(detector.model.parameters()).device.type == "cuda", warnings=warnings)
