"""Describe's data path: detection targets whose boxes keep their annotation ids and phrases.

Adds ``ann_ids`` (n,) int64, ``captions`` (n ``str | None``), ``has_caption`` (n,) bool to targets and
``caption_tokens`` (n, T) long at collate; :func:`read_region_references` reads every annotation for evaluation.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.transforms import v2

from vitkit.captioning.tokenizer import CaptionTokenizer
from vitkit.data.annotations import check_instances, read_coco_json
from vitkit.data.collate import collate_detection
from vitkit.data.region_captions import region_captions

_KEYS = ("images", "annotations", "categories")


class RegionIndex:
    """The region captions of one instances file and the annotation id of each box the detection targets hold.

    Args:
        path: ``instances_{split}2017.json``.
        hint: appended to file-level errors (the expected layout).

    Attributes:
        captions: annotation id -> phrase, or None for an annotation without ``caption`` (every annotation).
        box_ann_ids: (M,) int64 annotation id of each detection box row.
        boxes: (M, 4) float32 xyxy px of those rows, clipped to the image size the file gives.
        spans: image id -> (start, end) rows (absent: no box).

    Raises:
        ValueError: the file is malformed (naming the file, the annotation id and the field).
    """

    def __init__(self, path: str | os.PathLike, hint: str = "") -> None:
        self.path = Path(path)
        data = read_coco_json(self.path, "instances", _KEYS, hint)
        inst = check_instances(self.path, hint=hint, warn=False, data=data)  # CocoDetection issues its warnings
        self.captions: dict[int, str | None] = region_captions(data, self.path)
        self.box_ann_ids = inst.box_ann_ids
        self.boxes, self.spans = inst.boxes, inst.spans

    def phrases(self) -> list[str]:
        """Every phrase of the file (annotations without one left out), in file order."""
        return [c for c in self.captions.values() if c is not None]

    def target_ann_ids(self, target: dict[str, Any]) -> Tensor:
        """(n,) int64 annotation ids of a raw target's boxes (``image_id``, ``boxes`` (n, 4), before any transform).

        Raises:
            RuntimeError: the boxes do not correspond to the file's rows of that image.
        """
        start, end = self.spans.get(int(target["image_id"]), (0, 0))
        ids = torch.from_numpy(self.box_ann_ids[start:end].copy())  # (m,)
        n = len(target["boxes"])
        if n != end - start:  # the decoded image's size differs from the file's: CocoDetection clipped and dropped
            height, width = target["boxes"].canvas_size
            xyxy = torch.from_numpy(self.boxes[start:end].copy())  # (m, 4) px
            xyxy[:, 0::2].clamp_(0, width)
            xyxy[:, 1::2].clamp_(0, height)
            ids = ids[(xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])]
        if len(ids) != n:
            raise RuntimeError(f"{self.path}: image id {int(target['image_id'])} has {n} boxes in its target but "
                               f"{len(ids)} annotations to give them captions")
        return ids


def labels_and_ann_ids(inputs: Any) -> tuple[Tensor, Tensor]:
    """``labels_getter`` of ``v2.SanitizeBoundingBoxes``: the target's ``labels`` and ``ann_ids`` (dropped together
    with their boxes). ``inputs`` is ``(image, target)`` or the target alone."""
    target = inputs[1] if isinstance(inputs, tuple | list) else inputs
    return target["labels"], target["ann_ids"]


def _steps(transform: Any) -> Iterable[tuple[list[Any] | nn.ModuleList, int]]:
    """(list, index) of every step nested in ``transform`` (``Compose``, ``RandomChoice``, ``RandomApply``...)."""
    children = getattr(transform, "transforms", None)
    if isinstance(children, list | nn.ModuleList):
        for k, child in enumerate(children):
            yield children, k
            yield from _steps(child)


def carry_ann_ids(transform: Callable | None) -> Callable | None:
    """Make every ``v2.SanitizeBoundingBoxes`` inside ``transform`` (a v2 pipeline or None) drop ``ann_ids`` too.

    Returns:
        ``transform``, its ``SanitizeBoundingBoxes`` steps replaced in place (same thresholds,
        :func:`labels_and_ann_ids` as ``labels_getter``).

    Raises:
        ValueError: a ``SanitizeBoundingBoxes`` with a custom ``labels_getter``.
    """
    for siblings, k in list(_steps(transform)):
        step = siblings[k]
        if isinstance(step, v2.SanitizeBoundingBoxes) and step.labels_getter is not labels_and_ann_ids:
            if step.labels_getter != "default":
                raise ValueError(f"cannot carry annotation ids through {step!r}: it has a custom labels_getter")
            siblings[k] = v2.SanitizeBoundingBoxes(min_size=step.min_size, min_area=step.min_area,
                                                   labels_getter=labels_and_ann_ids)
    return transform


class RegionCaptionTransform:
    """Wrap a detection dataset's transforms so that each target keeps its boxes' annotation ids and phrases.

    Picklable; set it as ``CocoDetection.transforms``.

    Args:
        transforms: the dataset's ``(image, target) -> (image, target)`` pipeline, or None.
        index: the :class:`RegionIndex` of the dataset's annotation file.

    Returns (when called on a raw ``(image, target)``):
        ``(image, target)``, the target with ``ann_ids`` (n,) int64, ``captions`` (n ``str | None``) and
        ``has_caption`` (n,) bool, aligned with ``boxes`` and ``labels``.
    """

    def __init__(self, transforms: Callable | None, index: RegionIndex) -> None:
        self.transforms, self.index = carry_ann_ids(transforms), index

    def __call__(self, image: Any, target: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        target = {**target, "ann_ids": self.index.target_ann_ids(target)}
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        ann_ids = torch.as_tensor(target["ann_ids"]).as_subclass(Tensor).reshape(-1)  # (n,)
        if len(ann_ids) != len(target["boxes"]):
            raise RuntimeError(f"image id {int(target['image_id'])}: the transforms left {len(target['boxes'])} boxes "
                               f"and {len(ann_ids)} annotation ids; a step dropped boxes without its labels_getter "
                               "returning 'ann_ids' (see vitkit.describe.regions.carry_ann_ids)")
        captions = [self.index.captions[i] for i in ann_ids.tolist()]
        target.update(ann_ids=ann_ids, captions=captions,
                      has_caption=torch.tensor([c is not None for c in captions], dtype=torch.bool))
        return image, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transforms!r}, index={self.index.path})"


class RegionCaptionCollate:
    """Detection collate plus the tokens of every box's phrase.

    Args:
        tokenizer: turns phrases into ids.
        max_length: longest token sequence, BOS and EOS included (longer phrases lose their last words).
        pad_to_multiple: round the padded height and width up to a multiple of this.

    Returns (when called on B ``(image, target)`` samples):
        images (B, 3, Hmax, Wmax) zero-padded bottom/right; mask (B, Hmax, Wmax) bool, True = padding; the B
        targets, each with ``caption_tokens`` (n, T) long ``[BOS] phrase [EOS] [PAD]...`` (all ``[PAD]`` where
        ``has_caption`` is False), T shared by the batch (2 when no box has a phrase).
    """

    def __init__(self, tokenizer: CaptionTokenizer, max_length: int, pad_to_multiple: int = 1) -> None:
        self.tokenizer, self.max_length, self.pad_to_multiple = tokenizer, max_length, pad_to_multiple

    def __call__(self, batch: Sequence[tuple[Tensor, dict[str, Any]]]) -> tuple[Tensor, Tensor, list[dict[str, Any]]]:
        images, mask, targets = collate_detection(batch, pad_to_multiple=self.pad_to_multiple)
        texts = [c for t in targets for c in t["captions"] if c is not None]
        tokens = self.tokenizer.encode_batch(texts, max_length=self.max_length)  # (K, T), K phrases in the batch
        out, start = [], 0
        for target in targets:
            has = target["has_caption"]  # (n,)
            rows = tokens.new_full((len(has), tokens.shape[1]), self.tokenizer.pad_id)  # (n, T)
            count = int(has.sum())
            rows[has] = tokens[start:start + count]
            start += count
            out.append({**target, "caption_tokens": rows})
        return images, mask, out


@dataclass(frozen=True)
class RegionReferences:
    """The ground truth of one image as its file gives it: every annotation, crowd included, file order, unclipped.

    Attributes:
        ann_ids: (n,) int64 annotation ids.
        boxes: (n, 4) float64 COCO xywh pixels of the original image.
        category_ids: (n,) int64 COCO category ids.
        iscrowd: (n,) bool.
        captions: n phrases, None for an annotation without ``caption``.
    """

    ann_ids: np.ndarray
    boxes: np.ndarray
    category_ids: np.ndarray
    iscrowd: np.ndarray
    captions: list[str | None]


def read_region_references(path: str | os.PathLike, image_ids: Iterable[int] | None = None,
                           hint: str = "") -> dict[int, RegionReferences]:
    """Read each image's :class:`RegionReferences` from an annotation file that ``check_instances`` accepts.

    Args:
        path: ``instances_*.json``.
        image_ids: the images to return; None = every image of the file.
        hint: appended to file-level errors.

    Returns:
        Image id -> :class:`RegionReferences` (empty arrays for an image without annotations), in ``image_ids``
        order (None: by image id).

    Raises:
        ValueError: the file is not JSON, lacks a top-level list, or a ``caption`` is malformed.
    """
    data = read_coco_json(path, "instances", _KEYS, hint)
    captions = region_captions(data, path)
    ids = sorted(int(im["id"]) for im in data["images"]) if image_ids is None else [int(i) for i in image_ids]
    anns: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    for ann in data["annotations"]:
        if ann["image_id"] in anns:
            anns[ann["image_id"]].append(ann)
    return {i: RegionReferences(
        ann_ids=np.asarray([a["id"] for a in mine], dtype=np.int64),
        boxes=np.asarray([a["bbox"] for a in mine], dtype=np.float64).reshape(-1, 4),
        category_ids=np.asarray([a["category_id"] for a in mine], dtype=np.int64),
        iscrowd=np.asarray([bool(a.get("iscrowd", 0)) for a in mine], dtype=bool),
        captions=[captions[a["id"]] for a in mine],
    ) for i, mine in anns.items()}
