"""Detect objects in every image of a folder: a COCO results file, optionally pictures with the boxes drawn.

The library side of ``tools/detect.py``. File handling is the captioning tool's (:mod:`vitkit.data.folder`):
image files by extension in any letter case, sorted POSIX order, decoded by :func:`vitkit.data.images.load_rgb`
(EXIF orientation applied, any mode converted to RGB, the first frame of multi-frame files), preprocessed by the
detector's own :class:`~vitkit.detection.preprocess.DetectionPreprocess`, so the results equal
``Detector.predict(path)``; an unreadable file becomes a failure with its reason and the run goes on; a batch the
model fails on is retried image by image.

Image ids (``image_id`` of each result):

- **with an annotation file** (``annotations=instances_val2017.json``, the folder being that split): the file's
  ids, looked up by ``file_name`` (the path relative to the folder, or the bare file name when that is unique in
  the folder), so ``tools/eval.py --annotations GT --results OUT`` scores the output as is. Images are decoded
  in the orientation the annotation file's ``width``/``height`` describe (``load_rgb``'s ``size_hint``). A
  listed image the annotation file does not know is a failure ("not in the annotation file"): its boxes could
  not be given an id.
- **without**: the listed files are numbered 1, 2, ... in sorted order, unreadable ones included (so a file's
  id does not depend on which other files could be read).

Either way a sidecar ``<out stem>.images.json`` maps files to ids: ``{"images": [{"id", "file_name", "width",
"height"}]}``, the ``images`` section of a COCO annotation file (width and height of the decoded, upright image),
with ``"error"`` on a file that failed (and ``"id": null`` for a file the annotation file does not list).

Results are ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` with ``bbox`` in pixels of the
upright original image and ``category_id`` the dataset's id of the predicted class
(``Detector.label_to_cat_id``), sorted by image id, then score (descending). The file is written at the end
(atomically); an interrupted run writes nothing.

Drawn pictures (``draw_dir``): one per readable image, the same relative path; a ``.png``, ``.jpg`` or
``.jpeg`` input keeps its name (and format), any other gets ``.png`` appended (``anim.gif`` ->
``anim.gif.png``), so two inputs never share an output. Boxes are labelled ``"name score"`` and coloured by
class.
"""

from __future__ import annotations

import inspect
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2 import functional as F
from torchvision.utils import draw_bounding_boxes

from vitkit.data.folder import ImageFolder, folder_batches, overwrite_error, progress_bar, run_isolated
from vitkit.data.images import ImageReadError, load_rgb
from vitkit.detection.predictor import Detector
from vitkit.eval.coco_results import detection_entries
from vitkit.utils.files import atomic_write
from vitkit.viz.draw import PALETTE

DRAW_KEEP_SUFFIXES = (".png", ".jpg", ".jpeg")
# Labels on a filled background in the box colour where torchvision has it (0.23+): readable on any image.
_LABEL_STYLE = {"fill_labels": True} if "fill_labels" in inspect.signature(draw_bounding_boxes).parameters else {}


@dataclass
class FolderDetectionSummary:
    """What a :func:`detect_folder` run did.

    Attributes:
        detected: images detected (with or without boxes above the threshold).
        failed: images that could not be read or detected, or have no image id.
        boxes: detections written.
        seconds: wall time of the run.
        out: the results file.
        image_ids: the sidecar mapping files to image ids (and failed files to their errors).
        failures: (file, reason) of each failed image, in listing order.
        warnings: things the user should know (e.g. category ids the annotation file does not have).
    """
    detected: int = 0
    failed: int = 0
    boxes: int = 0
    seconds: float = 0.0
    out: Path = Path()
    image_ids: Path = Path()
    failures: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def line(self) -> str:
        """The one-line summary the CLI prints last."""
        return (f"detected {self.detected}, failed {self.failed} ({self.boxes} boxes) in {self.seconds:.1f} s; "
                f"output: {self.out}")


def image_ids_path(out: str | os.PathLike) -> Path:
    """The sidecar of a results file: ``dets.json`` -> ``dets.images.json``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.images.json")


def draw_path(rel: str, keep: tuple[str, ...] = DRAW_KEEP_SUFFIXES) -> str:
    """Output name of a picture made from the input ``rel``: kept when its suffix is in ``keep``, else + ".png"."""
    return rel if Path(rel).suffix.lower() in keep else f"{rel}.png"


def read_annotation_images(path: str | os.PathLike) -> tuple[dict[str, int], dict[str, tuple[int, int]], set[int]]:
    """``file_name`` -> image id, ``file_name`` -> (width, height), and the category ids of a COCO instances file.

    Raises:
        FileNotFoundError: no file.
        ValueError: not JSON, or no ``images`` list of entries with ``id`` and ``file_name``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path}: not a COCO annotation file (no 'images' list)")
    ids, sizes = {}, {}
    for i, im in enumerate(data["images"]):
        if not (isinstance(im, dict) and isinstance(im.get("file_name"), str) and isinstance(im.get("id"), int)):
            raise ValueError(f"{path}: images[{i}] needs an integer 'id' and a 'file_name'")
        name = Path(im["file_name"]).as_posix().removeprefix("./")
        ids[name] = im["id"]
        if isinstance(im.get("width"), int) and isinstance(im.get("height"), int):
            sizes[name] = (im["width"], im["height"])
    cats = {c["id"] for c in data.get("categories") or [] if isinstance(c, dict) and isinstance(c.get("id"), int)}
    return ids, sizes, cats


def match_files(files: list[str], ids: dict[str, int]) -> dict[str, str]:
    """Listed file -> its ``file_name`` in the annotation file: the relative path, else the bare file name when no
    other listed file has that name. Files without a match are left out."""
    names: dict[str, int] = {}
    for f in files:
        names[Path(f).name] = names.get(Path(f).name, 0) + 1
    out = {}
    for f in files:
        if f in ids:
            out[f] = f
        elif Path(f).name in ids and names[Path(f).name] == 1:
            out[f] = Path(f).name
    return out


def annotation_ids(annotations: str | os.PathLike,
                   files: list[str]) -> tuple[dict[str, int], dict[str, tuple[int, int]], set[int]]:
    """Image id and (width, height) of each listed file that an annotation file knows (see :func:`match_files`),
    and the file's category ids."""
    gt_ids, gt_sizes, cats = read_annotation_images(annotations)
    matched = match_files(files, gt_ids)
    return ({f: gt_ids[n] for f, n in matched.items()}, {f: gt_sizes[n] for f, n in matched.items() if n in gt_sizes},
            cats)


def annotation_size_hints(annotations: str | os.PathLike, folder: str | os.PathLike,
                          recursive: bool = True) -> dict[str, tuple[int, int]]:
    """{file: (width, height)} of the images of ``folder`` that the annotation file lists (``size_hints`` of
    :class:`~vitkit.data.folder.ImageFolder`)."""
    files = [p.as_posix() for p in ImageFolder(folder, recursive=recursive).files]
    return annotation_ids(annotations, files)[1]


def draw_detections(image: Image.Image | Tensor, boxes: Tensor, labels: list[int], names: list[str],
                    scores: list[float]) -> Tensor:
    """The image with labelled boxes drawn: (3, H, W) uint8.

    Args:
        image: RGB PIL image or (3, H, W) uint8 tensor.
        boxes: (K, 4) xyxy pixels of that image.
        labels: K contiguous labels (pick the colours); names: K class names; scores: K scores.
    """
    img = image if isinstance(image, Tensor) else F.pil_to_tensor(image)  # (3, H, W) uint8
    if not len(boxes):
        return img
    short = min(img.shape[-2:])
    font = _label_font()
    return draw_bounding_boxes(img, boxes.float(), labels=[f"{n} {s:.2f}" for n, s in zip(names, scores, strict=True)],
                               colors=[PALETTE[lab % len(PALETTE)] for lab in labels], width=max(1, round(short / 200)),
                               font=font, font_size=max(10, round(short / 40)) if font else None, **_LABEL_STYLE)


def _label_font() -> str | None:
    """A scalable TrueType font (matplotlib's DejaVu Sans), so labels grow with the image; None: Pillow's default."""
    import matplotlib

    path = Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
    return str(path) if path.is_file() else None


def draw_file(folder: str | os.PathLike, file: str, size_hint: tuple[int, int] | None, boxes: Tensor,
              labels: list[int], names: list[str], scores: list[float], draw_dir: str | os.PathLike) -> str | None:
    """Decode ``folder/file`` again (a batch holds it resized and normalised), draw the labelled boxes on it
    (:func:`draw_detections`) and save it under ``draw_dir`` at :func:`draw_path` of ``file``. Returns None, or why
    drawing failed."""
    dest = Path(draw_dir) / draw_path(file)
    try:
        pixels = draw_detections(load_rgb(Path(folder) / file, size_hint=size_hint), boxes, labels, names,
                                 scores)  # (3, H, W) uint8
        dest.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(dest)  # format from the suffix
    except (ImageReadError, OSError, ValueError) as err:
        return f"drawing failed: {type(err).__name__}: {err}"
    return None


def _draw(detector: Detector, folder: str | os.PathLike, file: str, size_hint: tuple[int, int] | None,
          det: dict[str, Tensor], draw_dir: str | os.PathLike | None) -> str | None:
    """:func:`draw_file` of a detection result, labelled with the class names (nothing when ``draw_dir`` is None)."""
    if draw_dir is None:
        return None
    labels = det["labels"].tolist()
    return draw_file(folder, file, size_hint, det["boxes"], labels, detector.label_text(labels),
                     det["scores"].tolist(), draw_dir)


def _check_options(folder: str | os.PathLike, out: Path, score_threshold: float,
                   draw_dir: str | os.PathLike | None) -> None:
    """Raise ValueError for a folder as ``out``, a threshold outside [0, 1] or ``draw_dir`` being ``folder``."""
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a file name, e.g. {out / 'dets.json'}")
    if not 0.0 <= score_threshold <= 1.0:
        raise ValueError(f"score threshold must be in [0, 1], got {score_threshold}")
    error = overwrite_error("--draw", draw_dir, folder)
    if error is not None:
        raise ValueError(error)


def _image_ids(detector: Detector, dataset: ImageFolder, files: list[str], annotations: str | os.PathLike | None,
               warnings: list[str]) -> dict[str, int]:
    """File -> image id: the annotation file's (which also sets ``dataset.size_hints``; a warning is added when
    the detector's category ids are not the file's), else the files numbered 1, 2, ... in listing order."""
    if annotations is None:
        return {f: i for i, f in enumerate(files, start=1)}
    image_ids, dataset.size_hints, cats = annotation_ids(annotations, files)
    unknown = sorted(set(detector.label_to_cat_id or range(detector.model.num_classes)) - cats)
    if unknown:
        warnings.append(f"the detector's category ids {unknown} are not categories of {annotations}; "
                        "COCOeval ignores their detections (was the model trained on this dataset?)")
    return image_ids


def _write_sidecar(path: Path, files: list[str], image_ids: dict[str, int], sizes: dict[str, tuple[int, int]],
                   failures: dict[str, str]) -> None:
    """Write the sidecar ``{"images": [...]}``, COCO's ``images`` entries: id, file name, decoded width and height,
    and the error of a failed file."""
    images = []
    for f in files:
        entry: dict[str, Any] = {"id": image_ids.get(f), "file_name": f}
        if f in sizes:
            entry.update(width=int(sizes[f][1]), height=int(sizes[f][0]))
        if f in failures:
            entry["error"] = failures[f]
        images.append(entry)
    atomic_write(path, json.dumps({"images": images}).encode("utf-8"))


def detect_folder(
    detector: Detector,
    folder: str | os.PathLike,
    out: str | os.PathLike,
    *,
    annotations: str | os.PathLike | None = None,
    score_threshold: float = 0.5,
    batch_size: int = 8,
    recursive: bool = True,
    num_workers: int = 0,
    progress: bool = False,
    draw_dir: str | os.PathLike | None = None,
) -> FolderDetectionSummary:
    """Detect the images of ``folder`` into a COCO results file ``out`` (see the module docstring).

    Args:
        detector: from :func:`vitkit.load` (on the device to run on).
        folder: the image folder.
        out: the results JSON to write.
        annotations: a COCO instances file whose ``images`` give the image ids (and orientation), or None to
            number the files (the ``<out stem>.images.json`` sidecar maps files to ids either way).
        score_threshold: keep detections scoring at least this.
        batch_size: images per forward pass.
        recursive: include subfolders.
        num_workers: DataLoader worker processes decoding and preprocessing images (0 = in this process).
        progress: show a progress bar on stderr.
        draw_dir: also write each image with its boxes drawn under this folder.

    Returns:
        A :class:`FolderDetectionSummary`.

    Raises:
        FileNotFoundError / NotADirectoryError: ``folder`` (or ``annotations``) is missing, or a file.
        ValueError: a bad option, ``out`` is a folder, or ``annotations`` is not a COCO annotation file.
    """
    start = time.perf_counter()
    out = Path(out)
    _check_options(folder, out, score_threshold, draw_dir)
    dataset = ImageFolder(folder, transform=detector.preprocessing, recursive=recursive)
    files = [p.as_posix() for p in dataset.files]
    summary = FolderDetectionSummary(out=out, image_ids=image_ids_path(out))
    image_ids = _image_ids(detector, dataset, files, annotations, summary.warnings)
    failures: dict[str, str] = {f: f"not in the annotation file {annotations} (no image id for its boxes)"
                                for f in files if f not in image_ids}
    sizes: dict[str, tuple[int, int]] = {}  # file -> (h, w) decoded
    results: list[dict[str, Any]] = []
    device = next(detector.model.parameters()).device
    todo = [i for i, f in enumerate(files) if f in image_ids]

    def detect(images: Tensor, mask: Tensor, batch_files: list[str]) -> list[dict[str, Tensor]]:
        target = torch.tensor([sizes[f] for f in batch_files], device=device)  # (B, 2) [h, w]
        with torch.no_grad():
            dets = detector.postprocess(detector.run(images, mask), target)
        return [{k: v[d["scores"] >= score_threshold].cpu() for k, v in d.items()} for d in dets]

    detector.eval()
    with progress_bar("detecting", progress) as bar:
        task = bar.add_task("detecting", total=len(todo))
        for batch_files, good, errors in folder_batches(dataset, todo, batch_size=batch_size, num_workers=num_workers,
                                                        pin_memory=device.type == "cuda"):
            failures.update({r["file"]: r["error"] for r in errors})
            if good is not None:
                sizes.update(zip(good["files"], good["sizes"], strict=True))
                for file, det in run_isolated(detect, good, "detection").items():
                    error = det if isinstance(det, str) else _draw(detector, folder, file, dataset.size_hints.get(file),
                                                                   det, draw_dir)
                    if error is not None:
                        failures[file] = error
                        continue
                    results.extend(detection_entries(det["boxes"], det["scores"], det["labels"], image_ids[file],
                                                      detector.label_to_cat_id))
                    summary.detected += 1
                    summary.boxes += len(det["scores"])
            bar.advance(task, len(batch_files))
    atomic_write(out, json.dumps(sorted(results, key=lambda r: (r["image_id"], -r["score"]))).encode("utf-8"))
    _write_sidecar(summary.image_ids, files, image_ids, sizes, failures)
    summary.failures = [(f, failures[f]) for f in files if f in failures]
    summary.failed = len(summary.failures)
    summary.seconds = time.perf_counter() - start
    return summary
