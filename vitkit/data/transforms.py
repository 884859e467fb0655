"""Detection augmentation presets on ``torchvision.transforms.v2``, and the evaluation preprocessing of every task.

Every transform here maps ``(image, target)`` -> ``(image, target)``: ``image`` a ``tv_tensors.Image`` (C, H, W),
``target`` a dict with ``boxes`` (``BoundingBoxes``, XYXY px) and ``labels`` (n,); other keys pass through."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import PIL.Image
import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.ops import box_convert
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from vitkit.data.images import load_rgb, to_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DETR_SCALES = tuple(range(480, 801, 32))  # 480, 512, ..., 800
DETR_CROP_RESIZE = (400, 500, 600)  # short sides DETR resizes to before its random crop


def _spatial_size(flat_inputs: list[Any]) -> tuple[int, int]:
    """(H, W) of the first image-like input (or the canvas of the first boxes when there is no image)."""
    canvas = None
    for inpt in flat_inputs:
        if isinstance(inpt, tv_tensors.BoundingBoxes):
            canvas = canvas or tuple(inpt.canvas_size)
        elif isinstance(inpt, (tv_tensors.KeyPoints, tv_tensors.Mask)):
            continue
        elif isinstance(inpt, (Tensor, PIL.Image.Image)):  # images, videos, a pure tensor taken as the image
            h, w = F.get_size(inpt)
            return int(h), int(w)
    if canvas is None:
        raise TypeError("no image or bounding boxes found in the transform's input")
    return canvas


def resized_size(height: int, width: int, size: int, max_size: int | None) -> tuple[int, int]:
    """Output (h, w) of a short-side resize to ``size`` with the long side capped at ``max_size``.

    ``v2.functional.resize(size=[size], max_size=max_size)`` arithmetic, except no side rounds down below 1 px."""
    short, long = (height, width) if height <= width else (width, height)
    new_short, new_long = size, int(size * long / short)
    if max_size is not None and new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    new_short = max(new_short, 1)
    return (new_short, new_long) if height <= width else (new_long, new_short)


class RandomShortestSideResize(v2.Transform):
    """Resize the short side to a size drawn uniformly from ``sizes`` (px), the long side capped at ``max_size``.

    Exact sizes as :func:`resized_size`; boxes are scaled with the image.

    Args:
        max_size: cap on the long side in px (must exceed every size), or None.
        antialias: antialias when downsampling tensors."""

    def __init__(self, sizes: int | Sequence[int], max_size: int | None = None, antialias: bool = True) -> None:
        super().__init__()
        self.sizes = [sizes] if isinstance(sizes, int) else [int(s) for s in sizes]
        if not self.sizes:
            raise ValueError("RandomShortestSideResize needs at least one size")
        if max_size is not None and max_size <= max(self.sizes):
            raise ValueError(f"max_size ({max_size}) must exceed every size ({max(self.sizes)})")
        self.max_size = max_size
        self.antialias = antialias

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        size = self.sizes[int(torch.randint(len(self.sizes), ()))]
        return {"size": list(resized_size(*_spatial_size(flat_inputs), size, self.max_size))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return F.resize(inpt, size=params["size"], antialias=self.antialias)


class RandomSizeCrop(v2.Transform):
    """Crop a random window: h ~ U[min_size, min(H, max_size)], w ~ U[min_size, min(W, max_size)] (px).

    Sides shorter than ``min_size`` are kept whole. Boxes are shifted and clamped to the window (follow with
    ``v2.SanitizeBoundingBoxes`` to drop those that fell outside)."""

    def __init__(self, min_size: int, max_size: int) -> None:
        super().__init__()
        if not 0 < min_size <= max_size:
            raise ValueError(f"need 0 < min_size <= max_size, got {min_size}, {max_size}")
        self.min_size, self.max_size = int(min_size), int(max_size)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = _spatial_size(flat_inputs)
        out = {}
        for name, side, offset in (("height", height, "top"), ("width", width, "left")):
            hi = min(side, self.max_size)
            lo = min(self.min_size, hi)
            crop = int(torch.randint(lo, hi + 1, ()))
            out[name] = crop
            out[offset] = int(torch.randint(side - crop + 1, ()))
        return out

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return F.crop(inpt, top=params["top"], left=params["left"], height=params["height"], width=params["width"])


def normalize_steps(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> list[v2.Transform]:
    """uint8 -> float32 in [0, 1], then per-channel ``(x - mean) / std``: the last steps of every transform."""
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


def detr_train_transforms(scales: Sequence[int] = DETR_SCALES, max_size: int | None = 1333,
                          crop: tuple[int, int] = (384, 600), resize_before_crop: Sequence[int] = DETR_CROP_RESIZE,
                          hflip_p: float = 0.5, crop_p: float = 0.5, min_box_size: float = 1.0,
                          mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> v2.Compose:
    """DETR's training augmentation: flip; multi-scale resize, or (``crop_p``) resize, crop, multi-scale resize;
    drop thin boxes; normalise.

    Args:
        scales: short sides (px) of the multi-scale resize.
        max_size: cap on the long side (px) of the multi-scale resize.
        crop: (min, max) side of the random crop in px.
        resize_before_crop: short sides (px) the crop branch first resizes to (no long-side cap).
        hflip_p, crop_p: probabilities of the horizontal flip and of the crop branch.
        min_box_size: boxes narrower or shorter than this (px, after all geometry) are dropped with their labels.
        mean, std: per-channel normalisation (of images scaled to [0, 1]).

    Returns:
        A transform ``(image, target) -> (image (3, H, W) float32 normalised, target)``."""
    multiscale = RandomShortestSideResize(scales, max_size=max_size)
    crop_branch = v2.Compose([
        RandomShortestSideResize(resize_before_crop),
        RandomSizeCrop(*crop),
        RandomShortestSideResize(scales, max_size=max_size),
    ])
    return v2.Compose([
        v2.RandomHorizontalFlip(p=hflip_p),
        v2.RandomChoice([multiscale, crop_branch], p=[1.0 - crop_p, crop_p]),
        v2.SanitizeBoundingBoxes(min_size=min_box_size),
        *normalize_steps(mean, std),
    ])


def val_transforms(size: int, max_size: int | None, mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD) -> v2.Compose:
    """The evaluation preprocessing of every task: short side to ``size`` px (long side capped at ``max_size`` px, must
    exceed ``size``, or None), to float32 in [0, 1], normalise with ``mean``/``std``.

    Returns:
        A transform ``(image, target) -> (image (3, H, W) float32 normalised, target)`` (or ``image -> image``)."""
    return v2.Compose([RandomShortestSideResize(size, max_size=max_size), *normalize_steps(mean, std)])


def detr_val_transforms(size: int = 800, max_size: int | None = 1333, mean: Sequence[float] = IMAGENET_MEAN,
                        std: Sequence[float] = IMAGENET_STD) -> v2.Compose:
    """DETR's evaluation transform: :func:`val_transforms` with DETR's default sizes (800, long side <= 1333)."""
    return val_transforms(size, max_size, mean, std)


class EvalPreprocess:
    """One image -> (3, h, w) float32 normalised tensor, as :func:`val_transforms` (``size``, ``max_size`` in px).

    Takes a path, a PIL image in any mode or a (3, H, W) tensor (uint8, or float in [0, 1]). Picklable. Leaves
    torch's global generator state as it was."""
    def __init__(self, size: int, max_size: int | None) -> None:
        self.size, self.max_size = int(size), None if max_size is None else int(max_size)
        self.transform = val_transforms(self.size, self.max_size)

    def tensor(self, image: str | os.PathLike | PIL.Image.Image | Tensor) -> Tensor:
        """The upright RGB pixels of an image (path, PIL image or tensor), not yet resized: (3, H, W).

        Raises:
            ImageReadError: a path cannot be read.
            ValueError: a tensor that is not (3, H, W)."""
        if isinstance(image, str | os.PathLike):
            image = load_rgb(image)
        t = image if isinstance(image, Tensor) else F.pil_to_tensor(to_rgb(image))  # (3, H, W) uint8
        if t.ndim != 3 or t.shape[0] != 3:
            raise ValueError(f"expected an RGB image (3, H, W), got shape {tuple(t.shape)}")
        return t

    def __call__(self, image: str | os.PathLike | PIL.Image.Image | Tensor) -> Tensor:
        t = tv_tensors.Image(self.tensor(image))  # (3, H, W)
        with torch.random.fork_rng(devices=[]):
            return self.transform(t).as_subclass(Tensor)  # (3, h, w) float32

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, max_size={self.max_size})"


def to_model_target(image: Any, target: dict[str, Any]) -> dict[str, Any]:
    """Convert a transformed target to the model contract.

    Args:
        image: the transformed image ((C, H, W) tensor or PIL image); its size normalises the boxes.
        target: ``boxes`` (n, 4) ``BoundingBoxes`` in px (any format), ``labels`` (n,), ``image_id``, ``orig_size``;
            other keys are kept.

    Returns:
        The target with ``boxes`` (n, 4) float32 cxcywh normalised, ``labels`` (n,) int64, ``image_id`` int,
        ``orig_size`` (2,) int64 [h, w] of the original image and ``size`` (2,) int64 [h, w] transformed, unpadded."""
    height, width = (int(v) for v in F.get_size(image))
    boxes = target["boxes"]
    fmt = boxes.format.name.lower() if isinstance(boxes, tv_tensors.BoundingBoxes) else "xyxy"
    boxes = boxes.as_subclass(Tensor).to(torch.float32).reshape(-1, 4)
    if fmt != "cxcywh":
        boxes = box_convert(boxes, in_fmt=fmt, out_fmt="cxcywh")
    boxes = boxes / torch.tensor([width, height, width, height], dtype=torch.float32)
    out = dict(target)
    out["boxes"] = boxes
    out["labels"] = torch.as_tensor(target["labels"]).as_subclass(Tensor).to(torch.int64).reshape(-1)
    out["image_id"] = int(target["image_id"])
    out["orig_size"] = torch.as_tensor(target["orig_size"], dtype=torch.int64)
    out["size"] = torch.tensor([height, width], dtype=torch.int64)
    return out
