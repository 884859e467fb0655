"""COCO-layout captioning dataset (:class:`CocoCaptions`)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from vitkit.data.annotations import AnnotationWarning
from vitkit.data.caption_annotations import check_captions
from vitkit.data.coco_images import CocoImageSet


class CocoCaptions(CocoImageSet):
    """COCO-layout captioning dataset; training references are drawn with torch's global generator.

    Args:
        root: dataset root holding ``{split}2017/`` and ``annotations/``.
        split: any ``NAME`` with ``NAME2017/`` and ``captions_NAME2017.json``.
        train: training items (random references) or evaluation items (all references); None = ``split == "train"``.
        captions_per_item: references in a training item: 1 = one string, k > 1 = a tuple of k strings (cycled
            where the image has fewer).
        transforms: a callable on the (3, H, W) uint8 ``tv_tensors.Image``.
        ann_file, img_folder: override ``root/annotations/captions_{split}2017.json`` and ``root/{split}2017``.
        bad_images: "fail" (raise :class:`~vitkit.data.images.ImageReadError` for a missing file at construction
            and for an unreadable one when read) or "skip" (leave missing files out with one counted warning;
            an unreadable item returns ``None`` and is recorded in ``bad_image_log``).

    Raises:
        FileNotFoundError: the caption file or the image folder is missing (the message gives the layout).
        ValueError: the caption file is malformed; the message names the file, the entry and the field.
        ImageReadError: with ``bad_images="fail"``, an image file is missing (naming the file, image id and field).

    Items: with ``train``, ``(image, caption, image_id)``; else ``(image, references, image_id)`` (list of str).
    Images without any caption are left out (with a warning)."""

    kind, file_title = "captions", "COCO caption file"

    def __init__(self, root: str | os.PathLike, split: str = "train", train: bool | None = None,
                 transforms: Any = None, ann_file: str | os.PathLike | None = None,
                 img_folder: str | os.PathLike | None = None, bad_images: str = "fail",
                 captions_per_item: int = 1) -> None:
        if captions_per_item < 1:
            raise ValueError(f"captions_per_item must be >= 1, got {captions_per_item}")
        self._locate(root, split, ann_file, img_folder, bad_images)
        self.train = split == "train" if train is None else train
        self.captions_per_item = captions_per_item
        self.transforms = transforms
        checked = check_captions(self.ann_file, hint=self.layout_hint, warn=False)
        for note in checked.warnings:
            warnings.warn(note, AnnotationWarning, stacklevel=2)
        self._files, self._sizes, captions = checked.files, checked.sizes, checked.captions
        uncaptioned = [image_id for image_id, refs in captions.items() if not refs]
        if uncaptioned:
            warnings.warn(f"{self.ann_file}: {len(uncaptioned)} image(s) have no caption and are left out, "
                          f"e.g. ids {uncaptioned[:5]}", AnnotationWarning, stacklevel=2)
        self._captions = {image_id: refs for image_id, refs in captions.items() if refs}
        if not self._captions:
            raise ValueError(f"{self.ann_file} has no captioned image")
        self.ids: list[int] = self._present_images(sorted(self._captions), self._files)

    @property
    def references(self) -> dict[int, list[str]]:
        """Image id -> raw reference captions, for :func:`vitkit.eval.caption_metrics.caption_metrics` (``gts``)."""
        return {image_id: list(self._captions[image_id]) for image_id in self.ids}

    def __len__(self) -> int:
        return len(self.ids)

    def annotated_size(self, index: int) -> tuple[int, int] | None:
        """Item ``index``'s (width, height) from the caption file, None where its image entry gives none."""
        return self._sizes.get(self.ids[index])

    def image_path(self, index: int) -> Path:
        """The image file of item ``index``."""
        return self.img_folder / self._files[self.ids[index]]

    def _draw(self, refs: list[str]) -> str | tuple[str, ...]:
        """A training item's references: one at random, or ``captions_per_item`` in a random order (cycled)."""
        k = self.captions_per_item
        if k == 1:
            return refs[int(torch.randint(len(refs), ()))]
        order = torch.randperm(len(refs)).tolist()
        return tuple(refs[order[i % len(refs)]] for i in range(k))

    def __getitem__(self, index: int) -> tuple[Any, str | tuple[str, ...], int] | tuple[Any, list[str], int] | None:
        image_id = self.ids[index]
        pil = self._read(index, self.image_path(index))
        if pil is None:
            return None
        image = tv_tensors.Image(F.pil_to_tensor(pil))  # (3, H, W) uint8
        if self.transforms is not None:
            image = self.transforms(image)
        refs = self._captions[image_id]
        if self.train:
            return image, self._draw(refs), image_id
        return image, list(refs), image_id

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(split={self.split!r}, train={self.train}, images={len(self)}, "
                f"ann_file='{self.ann_file}')")
