"""COCO-layout captioning dataset.

Reads ``root/annotations/captions_{split}2017.json`` and the images in ``root/{split}2017/``. Images are decoded
once per access by :func:`vitkit.data.images.load_rgb` (EXIF orientation applied, any mode to 8-bit RGB) and
wrapped as a uint8 ``tv_tensors.Image`` (3, H, W), as :class:`vitkit.data.coco.CocoDetection` does, then passed
through ``transforms``.

The caption file is checked at construction by :func:`vitkit.data.caption_annotations.check_captions` (errors name the
file, the entry and the field; blank captions are dropped with one counted warning). An image file missing on disk
is found at construction and an unreadable one when read; ``bad_images`` says what happens (see
:class:`CocoCaptions` and :mod:`vitkit.data.bad_images`).

Training items carry one reference caption drawn at random on every access (COCO has about 5 per image), so each
epoch sees a different mix; with ``captions_per_item`` k > 1 they carry k of them (a random order of the image's
references, cycled where it has fewer than k), so one pass of the image encoder serves k captions. The draw uses
torch's global generator: ``torch.manual_seed`` / ``lightning.seed_everything`` make it reproducible, and DataLoader
workers, which torch seeds one by one, draw different but reproducible captions.
"""

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
    """COCO-layout captioning dataset.

    Args:
        root: dataset root holding ``{split}2017/`` and ``annotations/``.
        split: "train" or "val" (any ``NAME`` with ``NAME2017/`` and ``captions_NAME2017.json`` works).
        train: training items (one random reference) or evaluation items (all references and the image id);
            None = ``split == "train"``.
        captions_per_item: references in a training item: 1 = one string, k > 1 = a tuple of k strings.
        transforms: a callable on the (3, H, W) uint8 ``tv_tensors.Image`` (e.g. a torchvision ``v2`` pipeline).
        ann_file: caption file overriding ``root/annotations/captions_{split}2017.json``.
        img_folder: image folder overriding ``root/{split}2017``.
        bad_images: "fail" (raise :class:`~vitkit.data.images.ImageReadError` for a missing file at construction
            and for an unreadable one when read) or "skip" (leave missing files out with one counted warning;
            an unreadable item returns ``None`` and is recorded in ``bad_image_log``).

    Raises:
        FileNotFoundError: the caption file or the image folder is missing (the message gives the layout).
        ValueError: the caption file is malformed (see :func:`vitkit.data.caption_annotations.check_captions`: not JSON,
            no ``images``/``annotations``, missing fields, duplicate ids, a caption for an image it does not
            list); the message names the file, the entry and the field.
        ImageReadError: with ``bad_images="fail"``, an image file is missing (naming the file, image id and field).

    Items: with ``train``, ``(image, caption, image_id)`` (``caption`` a tuple of ``captions_per_item`` strings when
    that is > 1); else ``(image, references, image_id)``. ``image`` is what
    ``transforms`` makes of the uint8 (3, H, W) image (unchanged without transforms), ``caption`` one raw
    reference string, ``references`` all of the image's raw references (list of str), ``image_id`` the COCO id.
    Images without any caption are left out (with a warning). With ``bad_images="skip"``, ``None`` for an
    unreadable image.
    """

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
