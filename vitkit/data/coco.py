"""COCO-layout detection dataset (:class:`CocoDetection`)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from vitkit.data.annotations import AnnotationWarning, check_instances
from vitkit.data.coco_images import CocoImageSet
from vitkit.data.transforms import to_model_target


class CocoDetection(CocoImageSet):
    """COCO-layout detection dataset returning model-ready targets.

    Category ids are sorted and mapped to labels 0..C-1 (``num_classes`` = C); images without annotations keep empty
    targets; ``iscrowd=1`` regions are left out of the targets. The file is checked by
    :func:`vitkit.data.annotations.check_instances`.

    Args:
        root: dataset root holding ``{split}2017/`` and ``annotations/``.
        split: any ``NAME`` with ``NAME2017/`` and ``instances_NAME2017.json``.
        transforms: ``(image, target) -> (image, target)``; ``target["boxes"]`` is ``BoundingBoxes`` in XYXY px.
        ann_file, img_folder: override ``root/annotations/instances_{split}2017.json`` and ``root/{split}2017``.
        bad_images: "fail" (raise :class:`~vitkit.data.images.ImageReadError` for a missing file at construction
            and for an unreadable one when read) or "skip" (leave missing files out with one counted warning;
            an unreadable item returns ``None`` and is recorded in ``bad_image_log``).

    Raises:
        FileNotFoundError: the annotation file or the image folder is missing (message gives the expected layout).
        ValueError: the annotation file is malformed, or no image is left.
        ImageReadError: with ``bad_images="fail"``, an image file is missing (naming the file, image id and field).

    Each item is ``(image, target)``: ``image`` (3, H, W) ``tv_tensors.Image`` (uint8 without transforms) and
    ``target`` with ``boxes`` (n, 4) float32 normalised cxcywh, ``labels`` (n,) int64 in 0..C-1, ``image_id`` int,
    ``orig_size`` (2,) int64 [h, w] as decoded, ``size`` (2,) int64 [h, w] after the transforms."""

    def __init__(self, root: str | os.PathLike, split: str = "train", transforms: Any = None,
                 ann_file: str | os.PathLike | None = None, img_folder: str | os.PathLike | None = None,
                 bad_images: str = "fail") -> None:
        self._locate(root, split, ann_file, img_folder, bad_images)
        self.transforms = transforms
        inst = check_instances(self.ann_file, hint=self.layout_hint, warn=False)
        for note in inst.warnings:
            warnings.warn(note, AnnotationWarning, stacklevel=2)
        self._images = inst.images  # image id -> (file_name, width, height)
        self._cat_ids: list[int] = [c for c, _ in inst.categories]
        self._class_names: list[str] = [n for _, n in inst.categories]
        self._cat_id_to_label = {cat_id: label for label, cat_id in enumerate(self._cat_ids)}
        self._boxes = inst.boxes  # (M, 4) float32 xyxy px, clipped to the annotated image size
        self._labels = np.searchsorted(np.asarray(self._cat_ids), inst.box_cat_ids).astype(np.int64)  # (M,)
        self._spans = inst.spans
        self.ids: list[int] = self._present_images(sorted(self._images), {i: im[0] for i, im in self._images.items()})
        self._size_warned: set[int] = set()

    # ------------------------------------------------------------------ category mapping

    @property
    def num_classes(self) -> int:
        """Number of categories C in the annotation file (labels are 0..C-1; no "no object" slot)."""
        return len(self._cat_ids)

    @property
    def cat_ids(self) -> list[int]:
        """COCO category ids, sorted; ``cat_ids[label]`` is the id of ``label``."""
        return list(self._cat_ids)

    @property
    def label_to_cat_id(self) -> dict[int, int]:
        """Contiguous label -> COCO category id."""
        return dict(enumerate(self._cat_ids))

    @property
    def cat_id_to_label(self) -> dict[int, int]:
        """COCO category id -> contiguous label."""
        return dict(self._cat_id_to_label)

    @property
    def class_names(self) -> list[str]:
        """Category names in label order."""
        return list(self._class_names)

    # ------------------------------------------------------------------ samples

    def __len__(self) -> int:
        return len(self.ids)

    def annotated_size(self, index: int) -> tuple[int, int]:
        """Item ``index``'s (width, height) from the instances file."""
        _, width, height = self._images[self.ids[index]]
        return width, height

    def image_path(self, index: int) -> Path:
        """The image file of item ``index``."""
        return self.img_folder / self._images[self.ids[index]][0]

    def _raw_target(self, image_id: int, height: int, width: int) -> dict[str, Any]:
        start, end = self._spans.get(image_id, (0, 0))
        xyxy = torch.from_numpy(self._boxes[start:end].copy())  # (n, 4) px, checked and clipped at construction
        labels = torch.from_numpy(self._labels[start:end].copy())  # (n,)
        _, ann_w, ann_h = self._images[image_id]
        if (width, height) != (ann_w, ann_h):  # the decoded image disagrees with the annotation file: clip to it
            xyxy[:, 0::2].clamp_(0, width)
            xyxy[:, 1::2].clamp_(0, height)
            keep = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
            xyxy, labels = xyxy[keep], labels[keep]
        return {
            "boxes": tv_tensors.BoundingBoxes(xyxy, format="XYXY", canvas_size=(height, width)),
            "labels": labels,
            "image_id": image_id,
            "orig_size": torch.tensor([height, width], dtype=torch.int64),
        }

    def _warn_size(self, image_id: int, path: Path, width: int, height: int) -> None:
        if image_id in self._size_warned:
            return
        self._size_warned.add(image_id)
        _, ann_w, ann_h = self._images[image_id]
        warnings.warn(f"{path} decodes to width {width}, height {height} but {self.ann_file.name} gives image id "
                      f"{image_id} fields 'width' {ann_w}, 'height' {ann_h}; its boxes are used as given, clipped to "
                      "the decoded image, and its predictions are in decoded pixels", AnnotationWarning, stacklevel=3)

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]] | None:
        image_id = self.ids[index]
        file_name, ann_w, ann_h = self._images[image_id]
        path = self.img_folder / file_name
        pil = self._read(index, path, size_hint=(ann_w, ann_h))
        if pil is None:
            return None
        if pil.size != (ann_w, ann_h):
            self._warn_size(image_id, path, pil.width, pil.height)
        image = tv_tensors.Image(F.pil_to_tensor(pil))  # (3, H, W) uint8
        target = self._raw_target(image_id, pil.height, pil.width)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, to_model_target(image, target)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(split={self.split!r}, images={len(self)}, classes={self.num_classes}, "
                f"ann_file='{self.ann_file}')")
