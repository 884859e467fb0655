"""Checks of COCO captions files: :func:`check_captions`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from vitkit.data.annotations import (
    Problems,
    check_unique,
    checked_images,
    entry_name,
    format_ids,
    is_int,
    is_number,
    read_coco_json,
    warn_all,
)


@dataclass
class Captions:
    """A checked COCO captions file.

    Attributes:
        files: image id -> file name, for every image of the file.
        captions: image id -> its non-blank captions in file order (empty list for an image without one).
        sizes: image id -> (width, height), for the images whose entry gives both as positive numbers.
        warnings: one message per sanitised kind."""

    files: dict[int, str]
    captions: dict[int, list[str]]
    sizes: dict[int, tuple[int, int]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def check_captions(path: str | os.PathLike, hint: str = "", warn: bool = True) -> Captions:
    """Read a COCO captions file (``captions_*.json``), raise on what cannot be used, drop blank captions.

    Images need ``id`` and ``file_name``, annotations ``id``, ``image_id`` and a string ``caption``; duplicate ids and
    captions of unlisted images are errors; blank captions are dropped and images left without one left out, each with
    one counted warning. ``hint``, ``warn`` and the ValueError as :func:`~vitkit.data.annotations.check_instances`.
    Returns the checked :class:`Captions`."""
    path = Path(path)
    data = read_coco_json(path, "caption", ("images", "annotations"), hint)
    errors = Problems(path)
    imgs = checked_images(errors, data["images"], {"id": "int", "file_name": "str"})
    files = {int(im["id"]): im["file_name"] for im in imgs}
    sizes = {int(im["id"]): (im["width"], im["height"]) for im in imgs
             if all(is_number(im.get(k)) and im[k] > 0 for k in ("width", "height"))}

    captions: dict[int, list[str]] = {image_id: [] for image_id in files}
    blank: list[int] = []
    anns = data["annotations"]
    for k, ann in enumerate(anns):
        where = entry_name("annotations", k, ann)
        if isinstance(ann, dict) and "bbox" in ann:  # instances files may carry region captions (issue 17)
            errors.add("annotations with a 'bbox'", ann.get("id", k),
                       f"annotations[{k}] needs 'image_id' and 'caption' and no 'bbox' ({where} has a field 'bbox': "
                       "is this an instances_*.json rather than a captions_*.json file? Its 'caption' fields would "
                       "be region phrases, not image captions)")
            continue
        if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
            missing = "caption" if isinstance(ann, dict) and "image_id" in ann else "image_id"
            errors.add("annotations without 'image_id' or 'caption'", k,
                       f"annotations[{k}] needs 'image_id' and 'caption' ({where} has no field '{missing}'; is this "
                       "an instances_*.json rather than a captions_*.json file?)")
            continue
        if not is_int(ann.get("id")):
            errors.add("annotations without an integer 'id'", k,
                       f"{where}: field 'id' must be an integer, got {ann.get('id', '<missing>')!r}")
            continue
        if ann["image_id"] not in captions:
            errors.add("captions of unknown images", ann["id"], f"{where}: field 'image_id' is image id "
                       f"{ann['image_id']!r}, which is not in 'images'")
            continue
        if not isinstance(ann["caption"], str):
            errors.add("non-string captions", ann["id"],
                       f"{where}: field 'caption' is a non-string caption: {ann['caption']!r}")
            continue
        if not ann["caption"].strip():
            blank.append(ann["id"])
            continue
        captions[ann["image_id"]].append(ann["caption"])
    errors.raise_first()
    check_unique(errors, "annotations", anns)
    errors.raise_first()

    notes = []
    if blank:
        notes.append(f"{path}: dropped {len(blank)} blank captions (ids {format_ids(blank)}); they would teach the "
                     "model to stop at once")
    warn_all(notes, warn)
    return Captions(files, captions, sizes, notes)
