"""Describe every image of a folder into a JSON Lines file, resumably (``vitkit describe``).

Record per image: ``{"file": path relative to the folder (POSIX), "width", "height" (upright image), "boxes":
[[x0, y0, x1, y1], ...] (px), "labels", "label_names" and "category_ids" (when known), "scores", "captions"}``.
Failures go to ``<out stem>.errors.jsonl`` (``{"file", "error"}``). ``boxes_file`` (COCO results: ``image_id`` or
``file_name``, ``bbox`` [x, y, w, h] px) gives boxes to caption instead of detections; other keys are ignored.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vitkit.data.folder import ImageFolder, check_picture_options, folder_image_ids, match_files, read_json
from vitkit.data.folder_runner import FolderSummary, FolderTask, RecordFile, run_folder
from vitkit.describe.predictor import Describer
from vitkit.viz.draw import draw_file


def is_described(record: dict[str, Any]) -> bool:
    """A finished record of the output file (resuming skips its image)."""
    return isinstance(record.get("captions"), list) and not record.get("error")


def _entry_box(entry: Any, i: int, path: Path) -> tuple[Any, Tensor]:
    """(image key: an int id or a POSIX file name, (4,) xyxy px) of a results entry."""
    bbox = entry.get("bbox") if isinstance(entry, dict) else None
    key = entry.get("file_name", entry.get("image_id")) if isinstance(entry, dict) else None
    if isinstance(key, str):
        key = Path(key).as_posix().removeprefix("./")
    ok_key = isinstance(key, str) or (isinstance(key, int) and not isinstance(key, bool))
    if not ok_key or not (isinstance(bbox, list) and len(bbox) == 4
                          and all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)):
        raise ValueError(f"{path}: entry [{i}] needs 'bbox': [x, y, w, h] (numbers, px) and an 'image_id' (int) or a "
                         f"'file_name'; got {json.dumps(entry)[:200]}")
    x, y, w, h = (float(v) for v in bbox)
    if w < 0 or h < 0:
        raise ValueError(f"{path}: entry [{i}] has a negative width or height: bbox {bbox}")
    return key, torch.tensor([x, y, x + w, y + h])


def read_boxes(path: str | os.PathLike, files: list[str], image_ids: dict[str, int]) -> tuple[dict[str, Tensor], int]:
    """The given boxes of each listed file (``image_ids``: file -> image id).

    An entry's image is found by ``file_name`` (path relative to the folder, or a bare name no other listed file
    has) or by ``image_id`` (``image_ids``); entries whose image is not listed are left out with a warning.

    Returns:
        {file: (n, 4) float32 xyxy px} for the files that have entries, and the number of entries left out.

    Raises:
        FileNotFoundError: no file; ValueError: not JSON, not a list, or a malformed entry (naming its index).
    """
    path, data = Path(path), read_json(path, "boxes file")
    if not isinstance(data, list):
        raise ValueError(f"{path}: not a COCO results file (a JSON list of {{'image_id' or 'file_name', 'bbox'}})")
    entries = [_entry_box(e, i, path) for i, e in enumerate(data)]
    names = match_files(files, {k: 0 for k, _ in entries if isinstance(k, str)})  # listed file -> name in the file
    by_key: dict[Any, str] = {name: f for f, name in names.items()}
    by_key.update({i: f for f, i in image_ids.items()})
    boxes: dict[str, list[Tensor]] = {}
    missing = 0
    for key, box in entries:
        file = by_key.get(key)
        if file is None:
            missing += 1
            continue
        boxes.setdefault(file, []).append(box)
    return {f: torch.stack(b) for f, b in boxes.items()}, missing


def _record(describer: Describer, file: str, size: tuple[int, int], result: dict[str, Any]) -> dict[str, Any]:
    """The JSON record of one image's :meth:`Describer.describe_batch` result."""
    record: dict[str, Any] = {"file": file, "width": int(size[1]), "height": int(size[0]),
                              "boxes": [[round(v, 2) for v in b] for b in result["boxes"].tolist()],
                              "labels": result["labels"].tolist()}
    if describer.class_names:
        record["label_names"] = result["label_names"]
    if describer.label_to_cat_id:
        record["category_ids"] = result["category_ids"]
    record.update(scores=[round(s, 6) for s in result["scores"].tolist()], captions=result["captions"])
    return record


def describe_task(describer: Describer, given: dict[str, Tensor] | None, threshold: float = 0.5,
                  max_detections: int | None = None, draw: Callable[[dict[str, Any]], str | None] | None = None,
                  **generation: Any) -> FolderTask:
    """Describing as a :class:`~vitkit.data.folder_runner.FolderTask`.

    Args:
        given: {file: (n, 4) xyxy px} boxes to caption instead of detections, or None.
        draw: a record -> None or why drawing failed; None: nothing drawn.
        **generation: caption decoding options; None takes the default.
    """
    options = describer.captions.generation_options(**generation)

    def predict(batch: dict[str, Any]) -> list[dict[str, Any]]:
        files, sizes = batch["files"], batch["sizes"]
        boxes = None if given is None else [given.get(f, torch.zeros(0, 4)) for f in files]
        results = describer.describe_batch(batch["images"], batch["mask"], torch.tensor(sizes), boxes, threshold,
                                           max_detections, **options)  # sizes (B, 2) [h, w]
        return [_record(describer, f, size, r) for f, size, r in zip(files, sizes, results, strict=True)]

    return FolderTask("described", "describing", predict, draw, items=("boxes", "regions"))


def describe_folder(describer: Describer, folder: str | os.PathLike, out: str | os.PathLike, *,
                    boxes_file: str | os.PathLike | None = None, annotations: str | os.PathLike | None = None,
                    threshold: float = 0.5, max_detections: int | None = None, batch_size: int = 8,
                    recursive: bool = True, num_workers: int = 0, overwrite: bool = False, progress: bool = False,
                    draw_dir: str | os.PathLike | None = None, **generation: Any) -> FolderSummary:
    """Describe the images of ``folder`` into the JSON Lines file ``out`` (created, or resumed).

    Args:
        boxes_file: a COCO results JSON whose boxes are captioned instead of detections; annotations: a COCO
            instances file whose image ids its ``image_id`` entries refer to.
        threshold, max_detections: detections kept per image (not used with boxes).
        batch_size, recursive, num_workers, progress: as :func:`vitkit.data.folder_runner.run_folder`.
        overwrite: start a fresh output file instead of resuming.
        draw_dir: also write each image with its boxes and captions drawn under this folder.
        **generation: caption decoding options; None takes the default.

    Returns:
        A :class:`~vitkit.data.folder_runner.FolderSummary` (``items``: regions; ``failures_file``: the errors file).

    Raises:
        FileNotFoundError / NotADirectoryError: ``folder``, ``boxes_file`` or ``annotations`` is missing.
        ValueError: a bad option, ``out`` is a folder or not an output of this tool, a malformed boxes file.
    """
    out = Path(out)
    output = RecordFile(out, is_described, "describe", "regions.jsonl", out.with_name(f"{out.stem}.errors.jsonl"))
    check_picture_options(folder, draw_dir, threshold)
    dataset = ImageFolder(folder, transform=describer.detector.preprocessing, recursive=recursive)
    files = [p.as_posix() for p in dataset.files]
    image_ids, dataset.size_hints, _ = folder_image_ids(files, annotations)
    given, warnings = None, []
    if boxes_file is not None:
        given, missing = read_boxes(boxes_file, files, image_ids)
        if missing:
            warnings.append(f"{missing} boxes of {boxes_file} name images that are not in {folder} (left out)")

    def draw(r: dict[str, Any]) -> str | None:
        names = describer.detector.label_text(r["labels"])
        return draw_file(folder, r["file"], dataset.size_hints.get(r["file"]), r["boxes"], r["labels"],
                         [f"{n}: {c}" for n, c in zip(names, r["captions"], strict=True)], r["scores"], draw_dir)

    task = describe_task(describer, given, threshold, max_detections, draw if draw_dir is not None else None,
                         **generation)
    return run_folder(task, dataset, output, batch_size=batch_size, num_workers=num_workers, overwrite=overwrite,
                      progress=progress, pin_memory=next(describer.model.parameters()).device.type == "cuda",
                      warnings=warnings)
