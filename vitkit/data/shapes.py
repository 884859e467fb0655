"""Synthetic COCO-2017-layout dataset: coloured shapes on textured backgrounds (:func:`make_shapes`).

Writes ``root/{train,val}2017/000000000001.jpg ...``, ``root/annotations/instances_{train,val}2017.json`` (COCO
detection; modal ``bbox`` xywh, ``area`` = visible pixels, RLE ``segmentation``, a ``caption`` phrase per object)
and ``captions_{train,val}2017.json`` (5 captions per image). Classes: square 1, circle 3, triangle 7, star 9."""

from __future__ import annotations

import functools
import io
import json
import math
import os
import warnings
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from vitkit.data.shape_captions import object_phrase, shape_captions
from vitkit.utils.files import atomic_write

MARKER = ".vitkit-shapes.json"


class NotAShapesFolder(FileExistsError):
    """Raised by :func:`make_shapes` for a folder that holds files the generator did not write."""


CATEGORIES: tuple[dict[str, Any], ...] = (
    {"id": 1, "name": "square", "supercategory": "shape"},
    {"id": 3, "name": "circle", "supercategory": "shape"},
    {"id": 7, "name": "triangle", "supercategory": "shape"},
    {"id": 9, "name": "star", "supercategory": "shape"},
)
COLORS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (220, 40, 40)),
    ("green", (40, 170, 60)),
    ("blue", (40, 80, 220)),
    ("yellow", (235, 205, 40)),
    ("purple", (150, 60, 190)),
    ("orange", (245, 135, 30)),
)
BACKGROUNDS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("gray", (128, 128, 128)),
    ("light gray", (185, 185, 185)),
    ("dark gray", (70, 70, 70)),
    ("beige", (205, 190, 155)),
    ("brown", (115, 90, 65)),
)
_SPLITS = ("train", "val")
_MIN_OBJECT_SIDE = 14  # px: the smallest object has the area of a 14 x 14 square
_MAX_OBJECT_SIDE = 0.6  # of the image's short side: the largest has the area of a square this wide
_MAX_OCCLUSION = 0.35  # an object keeps at least 65% of its pixels visible


# --------------------------------------------------------------------------------------------- drawing


# Per kind: half-extent / size (a circle of any rotation around the shape) and area / size**2.
_EXTENT = {"square": 0.5, "circle": 0.5, "triangle": 0.6, "star": 0.55}
_AREA = {
    "square": 1.0,
    "circle": math.pi / 4,
    "triangle": 0.75 * math.sqrt(3) * 0.6**2,  # equilateral, circumradius 0.6 * size
    "star": 5 * 0.45 * 0.55**2 * math.sin(math.pi / 5),  # 10 triangles (R, 0.45 R, 36 deg), R = 0.55 * size
}


def _outer_radius(kind: str, size: float) -> float:
    """Half-extent (px) that contains a shape of extent ``size`` at any rotation."""
    return _EXTENT[kind] * size


def _shape_mask(kind: str, cx: float, cy: float, size: float, angle: float, height: int, width: int) -> np.ndarray:
    """Rasterise one shape into an (H, W) bool mask."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    r = _outer_radius(kind, size)
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    elif kind == "square":  # axis-aligned, so that it reads as a square, not a diamond
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=1)
    else:
        n = 3 if kind == "triangle" else 10
        radii = [r] * 3 if kind == "triangle" else [r if k % 2 == 0 else 0.45 * r for k in range(10)]
        angles = [angle + 2 * math.pi * k / n for k in range(n)]
        points = [(cx + rk * math.sin(a), cy - rk * math.cos(a)) for rk, a in zip(radii, angles, strict=True)]
        draw.polygon(points, fill=1)
    return np.asarray(canvas, dtype=bool)


def _background(rng: np.random.Generator, height: int, width: int, base: tuple[int, int, int]) -> np.ndarray:
    """A textured (H, W, 3) float32 background: base tone + smooth blotches + optional stripes (noise comes later)."""
    gh, gw = (int(v) for v in rng.integers(3, 9, size=2))
    coarse = rng.normal(0.0, 18.0, size=(gh, gw)).astype(np.float32)
    shade = np.asarray(Image.fromarray(coarse, mode="F").resize((width, height), Image.BILINEAR))  # (H, W)
    if rng.random() < 0.4:
        theta, period, amp = rng.uniform(0, math.pi), rng.uniform(6, 20), rng.uniform(6, 14)
        ys = np.arange(height, dtype=np.float32)[:, None] * math.sin(theta)  # (H, 1)
        xs = np.arange(width, dtype=np.float32)[None, :] * math.cos(theta)  # (1, W)
        shade = shade + amp * np.sin((2 * math.pi / period) * (xs + ys))  # (H, W)
    return np.asarray(base, dtype=np.float32) + shade[..., None]  # (H, W, 3)


@functools.cache
def _noise_table(sigma: float) -> np.ndarray:
    return np.asarray([NormalDist(0.0, sigma).inv_cdf((k + 0.5) / 256) for k in range(256)], dtype=np.float32)


def _gaussian_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian noise quantised to 256 levels: random bytes through an inverse-CDF table (4x faster)."""
    return _noise_table(sigma)[np.frombuffer(rng.bytes(math.prod(shape)), dtype=np.uint8).reshape(shape)]


class _Layer:
    """One drawn thing (an object or a crowd region) with its full and still-visible masks."""

    def __init__(self, kind: str, color: str, mask: np.ndarray, crowd: bool = False) -> None:
        self.kind, self.color, self.mask, self.crowd = kind, color, mask, crowd
        self.visible = mask.copy()
        self.full_area = int(mask.sum())


def _fits_on_top(candidate: np.ndarray, color: str, layers: list[_Layer]) -> bool:
    """Whether a new top layer leaves every earlier layer mostly visible and touches none of its colour."""
    for layer in layers:
        hidden = int(np.count_nonzero(layer.visible & candidate))
        if not hidden:
            continue
        if layer.color == color:  # same-colour overlaps would merge into one blob
            return False
        if int(layer.visible.sum()) - hidden < (1.0 - _MAX_OCCLUSION) * layer.full_area:
            return False
    return True


def _place(rng: np.random.Generator, layers: list[_Layer], height: int, width: int, kind: str, color: str,
           size: float, crowd: bool = False, tries: int = 30) -> bool:
    """Try to add one object of the given kind/colour/size; returns whether it was placed."""
    ext = _outer_radius(kind, size)
    for _ in range(tries):
        cx, cy = rng.uniform(ext, width - 1 - ext), rng.uniform(ext, height - 1 - ext)
        mask = _shape_mask(kind, cx, cy, size, rng.uniform(0, 2 * math.pi), height, width)
        if mask.sum() and _fits_on_top(mask, color, layers):
            for layer in layers:
                layer.visible &= ~mask
            layers.append(_Layer(kind, color, mask, crowd))
            return True
    return False


def _crowd_layer(rng: np.random.Generator, height: int, width: int) -> _Layer:
    """A cluster of 8..14 tiny shapes of one class and colour, annotated as one crowd region."""
    kind = CATEGORIES[int(rng.integers(len(CATEGORIES)))]["name"]
    color = COLORS[int(rng.integers(len(COLORS)))][0]
    side = int(rng.integers(24, 45))
    x0, y0 = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
    union = np.zeros((height, width), dtype=bool)
    for _ in range(int(rng.integers(8, 15))):
        size = rng.uniform(5, 8)
        ext = _outer_radius(kind, size)
        cx, cy = x0 + rng.uniform(ext, side - ext), y0 + rng.uniform(ext, side - ext)
        union |= _shape_mask(kind, cx, cy, size, rng.uniform(0, 2 * math.pi), height, width)
    return _Layer(kind, color, union, crowd=True)


def _render_image(rng: np.random.Generator, height: int, width: int, num_objects: int,
                  with_crowd: bool) -> tuple[np.ndarray, list[_Layer], str]:
    """Draw one image. Returns the (H, W, 3) uint8 pixels, the layers bottom to top, and the background name."""
    bg_name, bg_rgb = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    img = _background(rng, height, width, bg_rgb)
    layers: list[_Layer] = [_crowd_layer(rng, height, width)] if with_crowd else []
    short = min(height, width)
    for _ in range(num_objects):
        kind = CATEGORIES[int(rng.integers(len(CATEGORIES)))]["name"]
        color = COLORS[int(rng.integers(len(COLORS)))][0]
        # log-uniform area: ~35% small (< 32**2 px), ~55% medium, ~10% large (> 96**2 px) at 192 px
        area = math.exp(rng.uniform(2 * math.log(_MIN_OBJECT_SIDE), 2 * math.log(_MAX_OBJECT_SIDE * short)))
        size = min(math.sqrt(area / _AREA[kind]), 0.45 * short / _EXTENT[kind])
        _place(rng, layers, height, width, kind, color, size)
    palette = dict(COLORS)
    for layer in layers:  # bottom to top: later layers paint over earlier ones
        img[layer.mask] = np.asarray(palette[layer.color], dtype=np.float32) + rng.uniform(-15, 15, size=3)
    img += _gaussian_noise(rng, (height, width, 3), sigma=8.0)
    np.clip(img, 0, 255, out=img)
    pixels = (img + 0.5).astype(np.uint8)  # round half up
    return pixels, layers, bg_name


# --------------------------------------------------------------------------------------------- writing


def _encode_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def _annotation(layer: _Layer, ann_id: int, image_id: int, cat_ids: dict[str, int]) -> dict[str, Any]:
    rows, cols = np.flatnonzero(layer.visible.any(axis=1)), np.flatnonzero(layer.visible.any(axis=0))
    x0, x1, y0, y1 = int(cols[0]), int(cols[-1]) + 1, int(rows[0]), int(rows[-1]) + 1  # pixel edges
    rle = mask_utils.encode(np.asfortranarray(layer.visible.astype(np.uint8)))
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cat_ids[layer.kind],
        "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
        "area": float(np.count_nonzero(layer.visible)),
        "iscrowd": int(layer.crowd),
        "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
        "caption": object_phrase(layer.kind, layer.color, float(np.count_nonzero(layer.visible)),
                                 *layer.visible.shape, crowd=layer.crowd),  # (H, W)
    }


def _paths(root: Path) -> dict[str, Path]:
    ann = root / "annotations"
    return {
        "root": root,
        "train_images": root / "train2017",
        "val_images": root / "val2017",
        "instances_train": ann / "instances_train2017.json",
        "instances_val": ann / "instances_val2017.json",
        "captions_train": ann / "captions_train2017.json",
        "captions_val": ann / "captions_val2017.json",
    }


def _check_arguments(image_size: int, size_jitter: int | None, min_objects: int, max_objects: int,
                     empty_fraction: float, crowd_fraction: float) -> int:
    """Raise on arguments :func:`make_shapes` cannot honour; returns the size jitter in px."""
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    jitter = image_size // 6 if size_jitter is None else size_jitter
    if image_size - jitter < 64 or jitter < 0:
        raise ValueError(f"image sides must stay >= 64 px, got image_size={image_size}, size_jitter={jitter}")
    if not (0.0 <= empty_fraction <= 1.0 and 0.0 <= crowd_fraction <= 1.0):
        raise ValueError("empty_fraction and crowd_fraction must lie in [0, 1]")
    return jitter


def _split_plan(rng: np.random.Generator, count: int, empty_fraction: float,
                crowd_fraction: float) -> tuple[set[int], set[int]]:
    """Which image indices of a split are empty, and which non-empty ones hold a crowd region."""
    empty = set(rng.choice(count, math.ceil(empty_fraction * count), replace=False).tolist())
    non_empty = [i for i in range(count) if i not in empty]
    n_crowd = math.ceil(crowd_fraction * len(non_empty))
    crowd = set(rng.choice(non_empty, n_crowd, replace=False).tolist()) if n_crowd else set()
    return empty, crowd


def make_shapes(root: str | os.PathLike, num_train: int = 600, num_val: int = 100, image_size: int = 192,
                size_jitter: int | None = None, seed: int = 0, min_objects: int = 1, max_objects: int = 4,
                empty_fraction: float = 0.05, crowd_fraction: float = 0.05, jpeg_quality: int = 95) -> dict[str, Path]:
    """Write the synthetic shapes dataset in COCO 2017 layout under ``root``, deterministically from ``seed``.

    Args:
        root: output folder: new, empty, or written by this generator before (its marker file present).
        image_size: nominal side in px; each image's height and width are drawn from ``image_size +- size_jitter``.
        size_jitter: px of variation per side; default ``image_size // 6``.
        min_objects: fewest objects in a non-empty image (fewer if they cannot be placed without
            hiding more than 35% of another object).
        empty_fraction: fraction of each split (rounded up) with no objects at all.
        crowd_fraction: fraction of the non-empty images (rounded up) that also hold an ``iscrowd=1`` region.
        jpeg_quality: JPEG quality (4:4:4 chroma).

    Returns:
        Paths: ``root``, ``{train,val}_images``, ``instances_{train,val}``, ``captions_{train,val}``.

    Raises:
        NotAShapesFolder: ``root`` holds other files and no marker; nothing is written."""
    jitter = _check_arguments(image_size, size_jitter, min_objects, max_objects, empty_fraction, crowd_fraction)

    paths = _paths(Path(root))
    _claim(paths["root"])
    for folder in (paths["train_images"], paths["val_images"], paths["instances_train"].parent):
        folder.mkdir(parents=True, exist_ok=True)
    cat_ids = {c["name"]: c["id"] for c in CATEGORIES}
    params = {"num_train": num_train, "num_val": num_val, "image_size": image_size, "size_jitter": jitter,
              "seed": seed, "min_objects": min_objects, "max_objects": max_objects,
              "empty_fraction": empty_fraction, "crowd_fraction": crowd_fraction, "jpeg_quality": jpeg_quality}
    info = {"description": "vitkit synthetic shapes (COCO 2017 layout)", "version": "1.0", "generator": params}
    atomic_write(paths["root"] / MARKER, json.dumps(info).encode("utf-8"))

    outputs: dict[str, dict[str, Any]] = {}
    next_image_id, next_ann_id, next_cap_id = 1, 1, 1
    for split_idx, (split, count) in enumerate(zip(_SPLITS, (num_train, num_val), strict=True)):
        empty, crowd = _split_plan(np.random.default_rng([seed, split_idx, 0]), count, empty_fraction, crowd_fraction)

        images, annotations, captions = [], [], []
        for i in range(count):
            rng = np.random.default_rng([seed, split_idx, 1, i])
            height, width = (int(v) for v in rng.integers(image_size - jitter, image_size + jitter + 1, size=2))
            num_objects = 0 if i in empty else int(rng.integers(min_objects, max_objects + 1))
            pixels, layers, bg = _render_image(rng, height, width, num_objects, with_crowd=i in crowd)

            image_id = next_image_id
            next_image_id += 1
            file_name = f"{image_id:012d}.jpg"
            atomic_write(paths[f"{split}_images"] / file_name, _encode_jpeg(pixels, jpeg_quality))
            images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})

            objects, crowd_desc = [], None
            for layer in layers:
                ann = _annotation(layer, next_ann_id, image_id, cat_ids)
                next_ann_id += 1
                annotations.append(ann)
                if layer.crowd:
                    crowd_desc = {"kind": layer.kind, "color": layer.color}
                else:
                    objects.append({"kind": layer.kind, "color": layer.color, "bbox": ann["bbox"],
                                    "area": ann["area"]})
            objects.sort(key=lambda o: -o["area"])
            for caption in shape_captions(rng, objects, crowd_desc, bg, height, width):
                captions.append({"id": next_cap_id, "image_id": image_id, "caption": caption})
                next_cap_id += 1

        common = {"info": info, "licenses": [], "images": images}
        outputs[f"captions_{split}"] = {**common, "annotations": captions}
        outputs[f"instances_{split}"] = {**common, "annotations": annotations, "categories": list(CATEGORIES)}

    # instances_train2017.json goes last: its presence means the whole set is complete (see ensure_shapes).
    for key in ("captions_val", "instances_val", "captions_train", "instances_train"):
        atomic_write(paths[key], json.dumps(outputs[key]).encode("utf-8"))
    return paths


def _claim(root: Path) -> None:
    """Create ``root`` for the generator, or refuse a folder holding files it did not write."""
    if root.exists() and not root.is_dir():
        raise NotAShapesFolder(f"{root} is a file, not a folder; nothing was written")
    if not root.exists() or (root / MARKER).is_file() or not any(root.iterdir()):
        root.mkdir(parents=True, exist_ok=True)
        return
    found = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    example = found[0] if found else next(iter(root.iterdir())).name
    raise NotAShapesFolder(
        f"{root} is not empty (it holds {len(found)} files, e.g. {example}) and has no "
        f"annotations/instances_train2017.json; the shapes generator writes only into a new or empty folder and "
        f"touched nothing here")


def ensure_shapes(root: str | os.PathLike, **kwargs: Any) -> dict[str, Path]:
    """Generate the shapes dataset under ``root`` (``kwargs`` of :func:`make_shapes`) unless it is already there.

    Present = ``root/annotations/instances_train2017.json`` exists; different recorded arguments only warn.

    Returns:
        The same paths as :func:`make_shapes`."""
    paths = _paths(Path(root))
    if not paths["instances_train"].is_file():
        return make_shapes(root, **kwargs)
    try:
        with open(paths["instances_train"], encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        data = None
    info = data.get("info") if isinstance(data, dict) else None
    recorded = info.get("generator") if isinstance(info, dict) else None
    if isinstance(recorded, dict):
        differing = {k: (recorded[k], v) for k, v in kwargs.items()
                     if v is not None and k in recorded and recorded[k] != v}
        if differing:
            warnings.warn(f"{root} holds a shapes set generated with other arguments (recorded, requested): "
                          f"{differing}; using it as is. Delete the folder to regenerate.", stacklevel=2)
    return paths
