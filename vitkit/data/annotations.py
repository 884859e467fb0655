"""Reading and checking COCO annotation files (instances and captions): errors, sanitising, counted warnings.

A malformed file either raises ``ValueError`` at construction (naming the file, the entry and the field) or is
sanitised with ONE :class:`AnnotationWarning` per kind (count and first ids). Nothing is dropped silently."""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

_MAX_IDS = 10  # ids quoted in one warning or error


class AnnotationWarning(UserWarning):
    """An annotation file was sanitised: entries were dropped, clipped or left out (one warning per kind, counted)."""


def format_ids(values: Sequence[Any]) -> str:
    """'5, 9, 12' (the first few, then '...')."""
    shown = ", ".join(str(v) for v in values[:_MAX_IDS])
    return shown + (", ..." if len(values) > _MAX_IDS else "")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_coco_json(path: str | os.PathLike, kind: str, keys: Sequence[str], hint: str = "") -> dict[str, Any]:
    """Parse a COCO annotation file and check its top-level lists.

    Args:
        kind: "instances" or "caption", for the messages.
        keys: top-level keys that must hold lists.
        hint: text appended to a missing-key error (e.g. the expected layout).

    Raises:
        ValueError: the file is not JSON (the message gives the position), not an object, or lacks one of ``keys``."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise ValueError(f"COCO {kind} file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"COCO {kind} file {path} holds a JSON {type(data).__name__}, not an object with "
                         f"{', '.join(repr(k) for k in keys)} lists. {hint}".rstrip())
    for key in keys:
        if not isinstance(data.get(key), list):
            raise ValueError(f"COCO {kind} file {path} has no '{key}' list. {hint}".rstrip())
    return data


class Problems:
    """Entries with a problem, grouped by kind: raise one error, or warn once per kind."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.first: dict[str, str] = {}  # kind -> message of the first entry
        self.ids: dict[str, list[Any]] = {}  # kind -> ids of every entry

    def add(self, kind: str, ident: Any, message: str = "") -> None:
        self.first.setdefault(kind, message)
        self.ids.setdefault(kind, []).append(ident)

    def raise_first(self) -> None:
        """Raise a ValueError for the first kind found (its first message, and how many entries share it)."""
        if not self.first:
            return
        kind, message = next(iter(self.first.items()))
        ids = self.ids[kind]
        more = f" ({len(ids)} entries have this problem: {format_ids(ids)})" if len(ids) > 1 else ""
        others = [k for k in self.first if k != kind]
        also = f"; the file has other problems too: {', '.join(others)}" if others else ""
        raise ValueError(f"{self.path}: {message}{more}{also}")


def entry_name(name: str, index: int, entry: Any) -> str:
    """'annotation id 17 (annotations[4])', or 'annotations[4]' when the entry has no usable id."""
    ident = entry.get("id") if isinstance(entry, dict) else None
    what = {"annotations": "annotation", "images": "image", "categories": "category"}[name]
    return f"{what} id {ident} ({name}[{index}])" if is_int(ident) else f"{name}[{index}]"


def _is_bbox(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 4 and all(is_number(v) for v in value)


_CHECKS = {"int": is_int, "str": lambda v: isinstance(v, str) and v != "", "size": lambda v: is_number(v) and v > 0,
           "bbox": _is_bbox}
_EXPECTED = {"int": "an integer", "str": "a non-empty string", "size": "a positive number of pixels",
             "bbox": "4 finite numbers [x, y, width, height]"}


def check_fields(problems: Problems, name: str, index: int, entry: Any, fields: dict[str, str]) -> bool:
    """Record a problem for the first missing or ill-typed field of ``entry``; True when the entry is usable."""
    if not isinstance(entry, dict):
        problems.add(f"{name} entries that are not objects", index, f"{entry_name(name, index, entry)} is a JSON "
                     f"{type(entry).__name__}, not an object")
        return False
    for key, kind in fields.items():
        if key not in entry:
            problems.add(f"{name} without '{key}'", entry.get("id", index),
                         f"{entry_name(name, index, entry)} has no field '{key}'")
            return False
        value = entry[key]
        if not _CHECKS[kind](value):
            problems.add(f"{name} with a bad '{key}'", entry.get("id", index),
                         f"{entry_name(name, index, entry)}: field '{key}' must be {_EXPECTED[kind]}, got {value!r}")
            return False
    return True


def _plain_annotation(a: Any) -> bool:
    """Fast check of an annotation made of plain JSON types (int ids, a list of 4 finite numbers)."""
    if type(a) is not dict:
        return False
    try:
        ids, box = (a["id"], a["image_id"], a["category_id"]), a["bbox"]
    except KeyError:
        return False
    return (all(type(v) is int for v in ids) and type(box) is list and len(box) == 4
            and all(type(v) is float or type(v) is int for v in box) and math.isfinite(sum(box)))


def check_unique(problems: Problems, name: str, entries: Sequence[dict[str, Any]],
                  reason: str = "") -> dict[int, int]:
    """id -> index of ``entries`` (usable ones), recording each repeated id as a problem."""
    seen: dict[int, int] = {}
    for index, entry in enumerate(entries):
        first = seen.setdefault(entry["id"], index)
        if first != index:
            what = entry_name(name, index, entry).split(" (")[0]
            problems.add(f"duplicate {name} ids", entry["id"],
                         f"{what} appears twice ({name}[{first}] and {name}[{index}]), field 'id'{reason}")
    return seen


def checked_images(errors: Problems, images: list[Any], fields: dict[str, str]) -> list[dict[str, Any]]:
    """The ``images`` entries with every field in ``fields`` valid and unique ids; raises on the first problem."""
    imgs = [im for k, im in enumerate(images) if check_fields(errors, "images", k, im, fields)]
    errors.raise_first()
    check_unique(errors, "images", imgs)
    errors.raise_first()
    return imgs


def warn_all(notes: list[str], warn: bool) -> None:
    """Issue each sanitising note as an :class:`AnnotationWarning` when ``warn``."""
    if warn:
        for note in notes:
            warnings.warn(note, AnnotationWarning, stacklevel=3)


def _check_categories(path: Path, entries: list[Any]) -> list[tuple[int, str]]:
    """(id, name) per category, sorted by id; a ValueError for a missing field, a duplicate id or no category."""
    errors = Problems(path)
    cats = [c for k, c in enumerate(entries) if check_fields(errors, "categories", k, c, {"id": "int", "name": "str"})]
    errors.raise_first()
    check_unique(errors, "categories", cats)
    errors.raise_first()
    if not cats:
        raise ValueError(f"{path} defines no categories (its 'categories' list is empty)")
    return sorted((int(c["id"]), str(c["name"])) for c in cats)


def read_categories(path: str | os.PathLike, hint: str = "") -> list[tuple[int, str]]:
    """(id, name) per category of a COCO instances file, sorted by id, checked as :func:`check_instances` does.

    Raises:
        ValueError: the file is not JSON, lacks a top-level list, or its categories are malformed or empty.
    """
    path = Path(path)
    data = read_coco_json(path, "instances", ("images", "annotations", "categories"), hint)
    return _check_categories(path, data["categories"])


@dataclass
class Instances:
    """A checked, sanitised COCO instances file.

    Attributes:
        categories: (id, name) per category, sorted by id.
        images: image id -> (file_name, width, height) as the file gives them.
        boxes: (M, 4) float32 xyxy px of the kept non-crowd boxes, clipped to their image, grouped by image.
        box_cat_ids, box_ann_ids: (M,) int64 category / annotation id of each kept box.
        spans: image id -> (start, end) rows of ``boxes`` (absent = no kept box).
        warnings: one message per sanitised kind."""

    categories: list[tuple[int, str]]
    images: dict[int, tuple[str, int, int]]
    boxes: np.ndarray
    box_cat_ids: np.ndarray
    box_ann_ids: np.ndarray
    spans: dict[int, tuple[int, int]]
    warnings: list[str] = field(default_factory=list)


def _sanitise_boxes(anns: list[dict[str, Any]], ann_ids: np.ndarray, image_of: np.ndarray, image_ids: np.ndarray,
                    images: dict[int, tuple[str, int, int]]) -> tuple[np.ndarray, tuple, dict[str, list], float]:
    """Clip the non-crowd boxes to their images (vectorised).

    Returns the (N,) kept mask, the clipped corners (x0, y0, x1, y1) each (N,) px, the annotation ids per sanitised
    kind, and the largest distance a clipped box reached past its image (px)."""
    n = len(anns)
    xywh = np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(n, 4)  # (N, 4) px
    crowd = np.fromiter((bool(a.get("iscrowd", 0)) for a in anns), bool, n)  # (N,)
    pos = np.searchsorted(image_ids, image_of)  # (N,) row of each annotation's image
    width = np.asarray([images[i][1] for i in image_ids.tolist()], dtype=np.float64)[pos]  # (N,)
    height = np.asarray([images[i][2] for i in image_ids.tolist()], dtype=np.float64)[pos]  # (N,)
    x, y, w, h = xywh.T  # (N,) each
    x0, y0 = np.maximum(x, 0.0), np.maximum(y, 0.0)
    x1, y1 = np.minimum(x + w, width), np.minimum(y + h, height)
    degenerate = ~crowd & ((w <= 0) | (h <= 0))
    outside = ~crowd & ~degenerate & ((x1 <= x0) | (y1 <= y0))
    kept = ~crowd & ~degenerate & ~outside
    overflow = np.maximum.reduce([x0 - x, y0 - y, x + w - x1, y + h - y1])  # (N,) px outside the image
    clipped = kept & (overflow > 0)
    max_overflow = float(overflow[clipped].max()) if clipped.any() else 0.0
    sanitised = {"degenerate": ann_ids[degenerate].tolist(), "outside": ann_ids[outside].tolist(),
                 "clipped": ann_ids[clipped].tolist(), "no_area": [a["id"] for a in anns if "area" not in a]}

    return kept, (x0, y0, x1, y1), sanitised, max_overflow


def check_instances(path: str | os.PathLike, hint: str = "", warn: bool = True,
                    data: dict[str, Any] | None = None) -> Instances:
    """Read a COCO instances file, raise on what cannot be trained on, sanitise the rest.

    Errors: not a JSON object with ``images``/``annotations``/``categories`` lists; a missing or mistyped required
    field (images: ``id``, ``file_name``, ``width`` > 0, ``height`` > 0; annotations: ``id``, ``image_id``,
    ``category_id``, ``bbox`` of 4 finite numbers; categories: ``id``, ``name``); duplicate ids; unknown
    ``category_id`` / ``image_id``. Sanitised (one counted warning each): boxes with width or height <= 0 or entirely
    outside their image are dropped (non-crowd); boxes partly outside are clipped (the warning gives the largest
    overflow in px); a missing ``area`` is only warned about. Evaluation always reads the original file.

    Args:
        hint: appended to file-level errors (the expected layout).
        warn: issue the sanitising warnings (always also returned in ``Instances.warnings``).
        data: the file already parsed by :func:`read_coco_json` (not changed); None reads ``path``.

    Raises:
        ValueError: naming the file, the entry and the field of the first error (and how many entries share it)."""
    path = Path(path)
    if data is None:
        data = read_coco_json(path, "instances", ("images", "annotations", "categories"), hint)
    errors = Problems(path)

    categories = _check_categories(path, data["categories"])

    imgs = checked_images(errors, data["images"], {"id": "int", "file_name": "str", "width": "size", "height": "size"})
    images = {int(im["id"]): (im["file_name"], int(im["width"]), int(im["height"])) for im in imgs}

    ann_fields = {"id": "int", "image_id": "int", "category_id": "int", "bbox": "bbox"}
    anns = data["annotations"]
    for k, a in enumerate(anns):
        if not _plain_annotation(a):
            check_fields(errors, "annotations", k, a, ann_fields)
    errors.raise_first()
    n = len(anns)
    ann_ids = np.fromiter((a["id"] for a in anns), np.int64, n)  # (N,)
    if len(np.unique(ann_ids)) != n:
        check_unique(errors, "annotations", anns, reason="; COCOeval indexes ground truth by annotation id and "
                      "would evaluate one of them twice and the other never")
    image_of = np.fromiter((a["image_id"] for a in anns), np.int64, n)  # (N,)
    cat_of = np.fromiter((a["category_id"] for a in anns), np.int64, n)  # (N,)
    image_ids = np.asarray(sorted(images), dtype=np.int64)  # (I,)
    known_cats = [c for c, _ in categories]
    for k in np.flatnonzero(~np.isin(image_of, image_ids)).tolist():
        errors.add("annotations of unknown images", anns[k]["id"], f"{entry_name('annotations', k, anns[k])}: field "
                   f"'image_id' is {anns[k]['image_id']}, which is not an image id of 'images'")
    for k in np.flatnonzero(~np.isin(cat_of, known_cats)).tolist():
        errors.add("annotations of unknown categories", anns[k]["id"], f"{entry_name('annotations', k, anns[k])}: "
                   f"field 'category_id' is {anns[k]['category_id']}, which is not a category id of 'categories' "
                   f"({format_ids(known_cats)})")
    errors.raise_first()

    kept, corners, sanitised, max_overflow = _sanitise_boxes(anns, ann_ids, image_of, image_ids, images)
    x0, y0, x1, y1 = corners

    rows = np.flatnonzero(kept)
    rows = rows[np.lexsort((rows, image_of[rows]))]  # by image id, then file order
    boxes = np.stack([x0, y0, x1, y1], axis=1)[rows].astype(np.float32)  # (M, 4) xyxy px
    box_cat_ids = cat_of[rows]  # (M,)
    kept_images, starts, counts = np.unique(image_of[rows], return_index=True, return_counts=True)
    spans = {i: (s, s + c) for i, s, c in zip(kept_images.tolist(), starts.tolist(), counts.tolist(), strict=True)}

    messages = {
        "degenerate": "dropped {n} annotations with zero or negative width/height (ids {ids}); they are not trained "
                      "on, and COCOeval on this file still counts each as a ground-truth box no detection can match",
        "outside": "dropped {n} annotations lying entirely outside their image (ids {ids}); COCOeval on this file "
                   "still counts each as a ground-truth box no detection can match",
        "clipped": "clipped {n} boxes that extend past their image to the image (ids {ids}; at most "
                   f"{max_overflow:.2f} px outside); COCOeval on this file compares detections with the unclipped "
                   "boxes",
        "no_area": "{n} annotations have no 'area' (ids {ids}); training does not need it, and COCO evaluation "
                   "uses the box's width x height as their area for its small/medium/large ranges (both backends)",
    }
    notes = [f"{path}: " + messages[kind].format(n=len(ids), ids=format_ids(ids))
             for kind, ids in sanitised.items() if ids]
    warn_all(notes, warn)
    return Instances(categories, images, boxes, box_cat_ids, ann_ids[rows], spans, notes)


def find_missing_images(folder: str | os.PathLike, file_names: Iterable[str]) -> set[str]:
    """The file names (relative to ``folder``, may hold subfolders) that are not files on disk.

    One directory listing per distinct parent folder; a name the listing lacks is confirmed with ``os.path.isfile``."""
    folder = Path(folder)
    listings: dict[Path, set[str]] = {}
    missing = set()
    for name in file_names:
        rel = Path(name)
        parent = folder / rel.parent
        if parent not in listings:
            try:
                with os.scandir(parent) as it:
                    listings[parent] = {e.name for e in it if e.is_file()}
            except OSError:
                listings[parent] = set()
        if rel.name not in listings[parent] and not (folder / rel).is_file():
            missing.add(name)
    return missing
