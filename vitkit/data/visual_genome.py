"""Visual Genome region descriptions -> a COCO-layout instances set with region captions.

Reads ``region_descriptions.json`` and ``image_data.json`` (VG v1.0 / v1.2); writes one category
``{"id": 1, "name": "region"}``, VG's image and region ids, boxes as COCO ``[x, y, width, height]`` px and each
region's phrase as ``caption``."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import numpy as np

from vitkit.data.annotations import Problems, format_ids, is_int, warn_all
from vitkit.data.region_captions import MAX_CAPTION_CHARS
from vitkit.utils.files import atomic_write

CATEGORY: dict[str, Any] = {"id": 1, "name": "region", "supercategory": "region"}
DEFAULT_VAL_FRACTION = 0.05
_SPLITS = ("train", "val")
_NOTES = {
    "degenerate": "dropped {n} regions with zero or negative width/height (region ids {ids})",
    "outside": "dropped {n} regions lying entirely outside their image (region ids {ids})",
    "clipped": "clipped {n} regions that extend past their image to the image (region ids {ids})",
    "empty": "dropped {n} regions with an empty phrase (region ids {ids})",
    "long": "dropped {n} regions whose phrase is longer than {max_chars} characters (region ids {ids})",
    "unlisted": "dropped {n} regions of images that {images} does not list: their size is unknown (region ids {ids})",
    "bare": "left out {n} images of {images} without a usable region (image ids {ids})",
    "unknown_val": "{n} validation image ids are not images of the converted set (ids {ids})",
}


@dataclass
class Conversion:
    """What :func:`convert_visual_genome` wrote.

    Attributes:
        paths: ``instances_train`` and ``instances_val`` -> the written files.
        images, annotations: split ("train", "val") -> number of images / annotations (regions).
        warnings: one note per sanitised kind."""

    paths: dict[str, Path]
    images: dict[str, int]
    annotations: dict[str, int]
    warnings: list[str] = field(default_factory=list)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _load_list(path: Path, what: str) -> list[Any]:
    """The top-level JSON list of a Visual Genome file."""
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"Visual Genome {what} file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, list):
        raise ValueError(f"Visual Genome {what} file {path} holds a JSON {type(data).__name__}, not a list with one "
                         f"entry per image; is it the right file (region_descriptions.json, image_data.json)?")
    return data


def _read_images(path: Path, entries: list[Any], need_url: bool) -> dict[int, tuple[float, float, str]]:
    """image id -> (width, height, url or "") of ``image_data.json``; raises on the first malformed entry."""
    errors = Problems(path)
    images: dict[int, tuple[float, float, str]] = {}
    first: dict[int, int] = {}
    for k, e in enumerate(entries):
        if not isinstance(e, dict):
            errors.add("entries that are not objects", k, f"entry {k} is a JSON {type(e).__name__}, not an object")
            continue
        key = "image_id" if "image_id" in e else "id"
        ident = e.get(key)
        if not is_int(ident):
            errors.add("entries without an integer 'image_id'", k, f"entry {k}: field 'image_id' (or 'id') must be "
                       f"an integer, got {e.get(key, '<missing>')!r}")
            continue
        where = f"entry {k} (image id {ident})"
        bad = [f for f in ("width", "height") if not (_number(e.get(f)) and e[f] > 0)]
        if need_url and not (isinstance(e.get("url"), str) and urlparse(e["url"]).path.strip("/")):
            bad.append("url")
        if bad:
            must = ("a non-empty URL (file_names='url' takes the file name from it)" if bad[0] == "url"
                    else "a positive number of pixels")
            errors.add(f"entries with a bad '{bad[0]}'", ident,
                       f"{where}: field '{bad[0]}' must be {must}, got {e.get(bad[0], '<missing>')!r}")
            continue
        if ident in first:
            errors.add("repeated image ids", ident, f"{where}: field '{key}' repeats the image id of entry "
                       f"{first[ident]}")
            continue
        first[ident] = k
        images[ident] = (e["width"], e["height"], e.get("url") if isinstance(e.get("url"), str) else "")
    errors.raise_first()
    return images


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


_REGION_FIELDS = {"region_id": (is_int, "an integer"), "phrase": (_is_str, "a string"),
                  **{k: (_number, "a finite number of pixels") for k in ("x", "y", "width", "height")}}


def _check_region(errors: Problems, where: str, region: Any, image_id: int) -> bool:
    """Record the first malformed field of one region; True when the region is usable."""
    if not isinstance(region, dict):
        errors.add("regions that are not objects", where, f"{where} is a JSON {type(region).__name__}, not an object")
        return False
    rid = region.get("region_id")
    if is_int(rid):
        where = f"region id {rid} ({where})"
    for key, (ok, must) in _REGION_FIELDS.items():
        if not ok(region.get(key)):
            got = repr(region[key]) if key in region else "nothing (the key is missing)"
            errors.add(f"regions with a bad '{key}'", rid if is_int(rid) else where,
                       f"{where}: field '{key}' must be {must}, got {got}")
            return False
    if "image_id" in region and region["image_id"] != image_id:
        errors.add("regions of another image", rid, f"{where}: field 'image_id' is {region['image_id']!r}, but the "
                   f"region is listed under image id {image_id}")
        return False
    return True


def _sanitise(region: dict[str, Any], size: tuple[float, float] | None, max_chars: int,
              dropped: dict[str, list[int]]) -> tuple[list[float], str] | None:
    """The clipped COCO box (xywh px) and normalised phrase of a checked region, or None (counted) when dropped."""
    rid = region["region_id"]
    phrase = " ".join(region["phrase"].split())
    x, y, w, h = (region[k] for k in ("x", "y", "width", "height"))
    if size is None:
        kind = "unlisted"
    else:
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, size[0]), min(y + h, size[1])  # clipped corners, px
        kind = ("empty" if not phrase else "long" if len(phrase) > max_chars else "degenerate" if w <= 0 or h <= 0
                else "outside" if x1 <= x0 or y1 <= y0 else "clipped" if (x0, y0, x1, y1) != (x, y, x + w, y + h)
                else None)
    if kind:
        dropped[kind].append(rid)
        if kind != "clipped":
            return None
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], phrase


def _convert_regions(path: Path, entries: list[Any], images: dict[int, tuple[float, float, str]], max_chars: int,
                     dropped: dict[str, list[int]]) -> dict[int, list[dict[str, Any]]]:
    """image id -> its kept annotations (file order); raises on the first malformed entry or region."""
    errors = Problems(path)
    per_image: dict[int, list[dict[str, Any]]] = {}
    seen_images: dict[int, int] = {}
    seen_regions: dict[int, str] = {}
    for k, e in enumerate(entries):
        key = "id" if isinstance(e, dict) and "id" in e else "image_id"
        if not (isinstance(e, dict) and is_int(e.get(key)) and isinstance(e.get("regions"), list)):
            bad = "regions" if isinstance(e, dict) and is_int(e.get(key)) else "id"
            got = repr(e.get(bad, "<missing>")) if isinstance(e, dict) else f"a JSON {type(e).__name__}"
            must = "a list of regions" if bad == "regions" else "an integer image id (or 'image_id')"
            errors.add(f"entries with a bad '{bad}'", k, f"entry {k}: field '{bad}' must be {must}, got {got}")
            continue
        image_id = e[key]
        if seen_images.setdefault(image_id, k) != k:
            errors.add("repeated image ids", image_id, f"entry {k} (image id {image_id}): field '{key}' repeats the "
                       f"image id of entry {seen_images[image_id]}")
            continue
        size = images[image_id][:2] if image_id in images else None
        for j, region in enumerate(e["regions"]):
            where = f"entry {k} (image id {image_id}), regions[{j}]"
            if not _check_region(errors, where, region, image_id):
                continue
            rid = region["region_id"]
            if rid in seen_regions:
                errors.add("repeated region ids", rid, f"region id {rid} ({where}): field 'region_id' repeats the "
                           f"region of {seen_regions[rid]}")
                continue
            seen_regions[rid] = where
            kept = _sanitise(region, size, max_chars, dropped)
            if kept:
                per_image.setdefault(image_id, []).append(
                    {"id": rid, "image_id": image_id, "category_id": CATEGORY["id"], "bbox": kept[0],
                     "area": kept[0][2] * kept[0][3], "iscrowd": 0, "caption": kept[1]})
    errors.raise_first()
    return per_image


def _split(image_ids: list[int], val_ids: Collection[int] | None, val_fraction: float | None,
           seed: int) -> tuple[set[int], list[int]]:
    """The validation image ids among ``image_ids`` (sorted), and the given validation ids that are not among them."""
    if val_ids is not None:
        wanted = set(val_ids)
        return wanted & set(image_ids), sorted(wanted - set(image_ids))
    fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
    n_val = math.ceil(fraction * len(image_ids))
    chosen = np.random.default_rng(seed).choice(len(image_ids), n_val, replace=False) if n_val else []
    return {image_ids[int(i)] for i in chosen}, []


def _file_name(image_id: int, url: str, rule: str) -> str:
    """``<image_id>.jpg`` (rule "id"), or the last folder and file of the image's URL (rule "url")."""
    return f"{image_id}.jpg" if rule == "id" else "/".join(urlparse(url).path.strip("/").split("/")[-2:])


def convert_visual_genome(regions: str | os.PathLike, images: str | os.PathLike, out: str | os.PathLike,
                          val_ids: Collection[int] | None = None, val_fraction: float | None = None, seed: int = 0,
                          file_names: Literal["id", "url"] = "id", max_chars: int = MAX_CAPTION_CHARS,
                          warn: bool = True) -> Conversion:
    """Convert Visual Genome's region descriptions to ``out/annotations/instances_{train,val}2017.json``.

    Sanitising (one counted ``AnnotationWarning`` per kind when ``warn``): boxes with width or height <= 0 or entirely
    outside their image, empty phrases, phrases over ``max_chars``, and regions of images not in ``image_data.json``
    are dropped; boxes partly outside are clipped; whitespace runs become one space; images left without a region
    are left out.

    Args:
        out: the dataset root (``annotations/`` is created; existing files of the same names are replaced).
        val_ids: image ids of the validation split (all other kept images are train).
        val_fraction: fraction of the kept images (rounded up) drawn for validation with ``seed``; default 0.05
            when ``val_ids`` is not given either.
        file_names: "id" names images ``<image_id>.jpg``; "url" keeps VG's folder (``VG_100K/<image_id>.jpg``).
        max_chars: longest phrase kept, characters (after whitespace normalisation).

    Raises:
        ValueError: malformed input (not a JSON list, a missing or mistyped key, a region whose ``image_id`` differs
            from its entry's, repeated ids), naming the file, the entry (index and id) and the field; ``val_ids``
            together with ``val_fraction``, a fraction outside [0, 1], or an unknown ``file_names``."""
    if file_names not in ("id", "url"):
        raise ValueError(f"file_names must be 'id' or 'url', got {file_names!r}")
    if val_ids is not None and val_fraction is not None:
        raise ValueError("give val_ids or val_fraction, not both")
    if val_fraction is not None and not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1], got {val_fraction}")
    regions, images = Path(regions), Path(images)
    sizes = _read_images(images, _load_list(images, "image_data"), need_url=file_names == "url")
    dropped: dict[str, list[int]] = {k: [] for k in ("degenerate", "outside", "clipped", "empty", "long", "unlisted")}
    per_image = _convert_regions(regions, _load_list(regions, "region_descriptions"), sizes, max_chars, dropped)
    kept_ids = sorted(i for i in sizes if per_image.get(i))
    val, unknown_val = _split(kept_ids, val_ids, val_fraction, seed)
    notes_ids = {**dropped, "bare": sorted(set(sizes) - set(kept_ids)), "unknown_val": unknown_val}
    notes = [f"{regions}: " + _NOTES[kind].format(n=len(ids), ids=format_ids(ids), max_chars=max_chars,
                                                  images=images.name) for kind, ids in notes_ids.items() if ids]
    split_rule = {"val_ids_given": len(val_ids)} if val_ids is not None else {
        "val_fraction": DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction, "seed": seed}
    info = {"description": "Visual Genome region descriptions in COCO layout (vitkit)", "version": "1.0",
            "converter": {"regions": regions.name, "images": images.name, "file_names": file_names,
                          "max_chars": max_chars, **split_rule}}

    root = Path(out)
    paths = {f"instances_{s}": root / "annotations" / f"instances_{s}2017.json" for s in _SPLITS}
    counts: dict[str, dict[str, int]] = {"images": {"train": 0, "val": 0}, "annotations": {"train": 0, "val": 0}}
    for split in ("val", "train"):  # train last: its presence means the set is complete
        ids = [i for i in kept_ids if (i in val) == (split == "val")]
        entries = [{"id": i, "file_name": _file_name(i, sizes[i][2], file_names), "width": sizes[i][0],
                    "height": sizes[i][1]} for i in ids]
        anns = [a for i in ids for a in per_image[i]]
        data = {"info": info, "licenses": [], "images": entries, "annotations": anns, "categories": [CATEGORY]}
        atomic_write(paths[f"instances_{split}"], json.dumps(data).encode("utf-8"))
        counts["images"][split], counts["annotations"][split] = len(entries), len(anns)
    warn_all(notes, warn)
    return Conversion(paths, counts["images"], counts["annotations"], notes)
