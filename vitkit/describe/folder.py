"""Describe every image of a folder into a JSON Lines file, resumably: the engine of ``vitkit describe``.

It is the folder tools' machinery put together, not a third copy of it:

- files, decoding, batching and bad files as in ``vitkit detect`` / ``vitkit caption`` (:mod:`vitkit.data.folder`:
  image extensions in any letter case, sorted POSIX order, :func:`~vitkit.data.images.load_rgb`, the detector's
  own preprocessing; an unreadable file becomes a failure with its reason and the run goes on; a batch the model
  fails on is retried image by image);
- the output file and resuming as in ``vitkit caption`` (:class:`~vitkit.captioning.folder.CaptionOutput`,
  :func:`~vitkit.captioning.folder.resume_output`): records are appended and flushed batch by batch; a rerun with the
  same ``out`` skips the images described there and retries the others; a partial last line (a killed run) is
  dropped;
- the pictures as in ``vitkit detect`` (:func:`~vitkit.detection.folder.draw_file`, the same output names), each box
  labelled ``"class: caption score"``.

One record per described image, in listing order: ``{"file": path relative to the folder (POSIX), "width", "height"
(the decoded, upright image), "boxes": [[x0, y0, x1, y1], ...] (pixels of that image), "labels": [contiguous
label, ...], "label_names": [...] and "category_ids": [...] (when the checkpoint has them), "scores": [...],
"captions": [...]}``. Images that fail get no record: they are listed in the summary and in
``<out stem>.errors.jsonl`` (``{"file", "error"}`` lines, the failures of the latest run; removed when there are
none), and retried by the next run.

Given boxes (``boxes_file``, COCO results format: a JSON list of ``{"image_id" or "file_name", "bbox": [x, y, w,
h], ...}`` in pixels of the upright image) are captioned instead of detections; other keys (``score``,
``category_id``) are ignored and every given box is captioned. An entry's image is found:

- by ``file_name``: the path relative to the folder, or the bare file name when no other listed file has it (as
  ``vitkit detect --annotations`` matches an annotation file's names);
- by ``image_id``: with ``annotations`` (a COCO instances file of the folder's split), that file's ids; without, the
  listed files numbered 1, 2, ... in sorted order, unreadable ones included: the ids ``vitkit detect`` gives without
  ``--annotations`` (its ``<out stem>.images.json`` lists them), so its results file can be passed as it is.

Entries whose image is not in the folder are left out with a warning; a listed image without entries gets a record
with no boxes.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vitkit.captioning.folder import CaptionOutput, resume_output
from vitkit.data.folder import ImageFolder, folder_batches, overwrite_error, progress_bar, run_isolated
from vitkit.describe.predictor import Describer
from vitkit.detection.folder import annotation_ids, draw_file, match_files
from vitkit.utils.files import atomic_write


@dataclass
class FolderDescribeSummary:
    """What a :func:`describe_folder` run did.

    Attributes:
        described: images described in this run; failed: images that failed in this run; skipped: listed images
            already described in the output file (not redone); regions: boxes written in this run.
        seconds: wall time; out: the output file; errors: the file listing this run's failures.
        failures: (file, reason) of each failed image, in listing order.
        warnings: things the user should know (e.g. given boxes of images that are not in the folder).
    """
    described: int = 0
    failed: int = 0
    skipped: int = 0
    regions: int = 0
    seconds: float = 0.0
    out: Path = Path()
    errors: Path = Path()
    failures: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def line(self) -> str:
        """The one-line summary the CLI prints last."""
        return (f"described {self.described}, failed {self.failed}, skipped {self.skipped} (already done) "
                f"({self.regions} regions) in {self.seconds:.1f} s; output: {self.out}")


def errors_path(out: str | os.PathLike) -> Path:
    """Where a run's failures go: ``regions.jsonl`` -> ``regions.errors.jsonl``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.errors.jsonl")


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


def read_boxes(path: str | os.PathLike, files: list[str], annotations: str | os.PathLike | None = None
               ) -> tuple[dict[str, Tensor], int]:
    """The given boxes of each listed file (see the module docstring for how entries find their image).

    Returns:
        {file: (n, 4) float32 xyxy px} for the files that have entries, and the number of entries left out (their
        image is not in the folder).

    Raises:
        FileNotFoundError: no file; ValueError: not JSON, not a list, or a malformed entry (naming its index).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"boxes file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, list):
        raise ValueError(f"{path}: not a COCO results file (a JSON list of {{'image_id' or 'file_name', 'bbox'}})")
    entries = [_entry_box(e, i, path) for i, e in enumerate(data)]
    names = match_files(files, {k: 0 for k, _ in entries if isinstance(k, str)})  # listed file -> name in the file
    by_key: dict[Any, str] = {name: f for f, name in names.items()}
    ids = annotation_ids(annotations, files)[0] if annotations is not None else \
        {f: i for i, f in enumerate(files, start=1)}
    by_key.update({i: f for f, i in ids.items()})
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


def _check_options(folder: str | os.PathLike, out: Path, threshold: float, draw_dir: str | os.PathLike | None) -> None:
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a file name, e.g. {out / 'regions.jsonl'}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    error = overwrite_error("--draw", draw_dir, folder)
    if error is not None:
        raise ValueError(error)


def _write_errors(path: Path, failures: list[tuple[str, str]]) -> None:
    if not failures:
        path.unlink(missing_ok=True)
        return
    text = "".join(json.dumps({"file": f, "error": e}, ensure_ascii=False) + "\n" for f, e in failures)
    atomic_write(path, text.encode("utf-8", errors="surrogateescape"))


def describe_folder(describer: Describer, folder: str | os.PathLike, out: str | os.PathLike, *,
                    boxes_file: str | os.PathLike | None = None, annotations: str | os.PathLike | None = None,
                    threshold: float = 0.5, max_detections: int | None = None, batch_size: int = 8,
                    recursive: bool = True, num_workers: int = 0, overwrite: bool = False, progress: bool = False,
                    draw_dir: str | os.PathLike | None = None, **generation: Any) -> FolderDescribeSummary:
    """Describe the images of ``folder`` into the JSON Lines file ``out`` (see the module docstring).

    Args:
        describer: from :func:`vitkit.load` (on the device to run on).
        folder: the image folder; out: the JSON Lines file (created, or resumed when it exists).
        boxes_file: a COCO results JSON whose boxes are captioned instead of detections; annotations: a COCO
            instances file whose image ids (and orientation) its ``image_id`` entries refer to.
        threshold, max_detections: detections kept per image (:meth:`Describer.describe`; not used with boxes).
        batch_size, recursive, num_workers, progress: as :func:`vitkit.captioning.folder.caption_folder`.
        overwrite: start a fresh output file instead of resuming.
        draw_dir: also write each image with its boxes and captions drawn under this folder.
        **generation: caption decoding options (method, num_beams, max_length, ...); None takes the default.

    Raises:
        FileNotFoundError / NotADirectoryError: ``folder``, ``boxes_file`` or ``annotations`` is missing.
        ValueError: a bad option, ``out`` is a folder or not an output of this tool, a malformed boxes file.
    """
    start, out = time.perf_counter(), Path(out)
    _check_options(folder, out, threshold, draw_dir)
    options = describer.captions.generation_options(**generation)
    dataset = ImageFolder(folder, transform=describer.detector.preprocessing, recursive=recursive)
    files = [p.as_posix() for p in dataset.files]
    summary = FolderDescribeSummary(out=out, errors=errors_path(out))
    if annotations is not None:
        dataset.size_hints = annotation_ids(annotations, files)[1]
    given = None
    if boxes_file is not None:
        given, missing = read_boxes(boxes_file, files, annotations)
        if missing:
            summary.warnings.append(f"{missing} boxes of {boxes_file} name images that are not in {folder} "
                                    "(left out)")
    output = CaptionOutput(out, "jsonl")
    todo = resume_output(output, files, overwrite, is_done=is_described)
    summary.skipped = len(files) - len(todo)
    device = next(describer.model.parameters()).device
    sizes: dict[str, tuple[int, int]] = {}

    def describe(images: Tensor, mask: Tensor, batch_files: list[str]) -> list[dict[str, Any]]:
        target = torch.tensor([sizes[f] for f in batch_files])  # (B, 2) [h, w]
        boxes = None if given is None else [given.get(f, torch.zeros(0, 4)) for f in batch_files]
        return describer.describe_batch(images, mask, target, boxes, threshold, max_detections, **options)

    with progress_bar("describing", progress) as bar:
        task = bar.add_task("describing", total=len(todo))
        for batch_files, good, errors in folder_batches(dataset, todo, batch_size=batch_size, num_workers=num_workers,
                                                        pin_memory=device.type == "cuda"):
            failed = {r["file"]: r["error"] for r in errors}
            records = []
            if good is not None:
                sizes.update(zip(good["files"], good["sizes"], strict=True))
                for file, result in run_isolated(describe, good, "describing").items():
                    if isinstance(result, str):
                        failed[file] = result
                        continue
                    record = _record(describer, file, sizes[file], result)
                    error = None if draw_dir is None else draw_file(
                        folder, file, dataset.size_hints.get(file), result["boxes"], record["labels"],
                        [f"{n}: {c}" for n, c in zip(result["label_names"], result["captions"], strict=True)],
                        record["scores"], draw_dir)
                    if error is not None:
                        failed[file] = error
                        continue
                    records.append(record)
            output.append(records)
            summary.described += len(records)
            summary.regions += sum(len(r["boxes"]) for r in records)
            summary.failures.extend((f, failed[f]) for f in batch_files if f in failed)
            bar.advance(task, len(batch_files))
    _write_errors(summary.errors, summary.failures)
    summary.failed = len(summary.failures)
    summary.seconds = time.perf_counter() - start
    return summary
