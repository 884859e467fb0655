"""COCO-layout captioning dataset.

Reads ``root/annotations/captions_{split}2017.json`` and the images in ``root/{split}2017/``. Images are decoded
once per access by :func:`vitkit.data.images.load_rgb` (EXIF orientation applied, any mode to 8-bit RGB) and
wrapped as a uint8 ``tv_tensors.Image`` (3, H, W), as :class:`vitkit.data.coco.CocoDetection` does, then passed
through ``transforms``.

The caption file is checked at construction by :func:`vitkit.data.annotations.check_captions` (errors name the
file, the entry and the field; blank captions are dropped with one counted warning). An image file missing on disk
is found at construction and an unreadable one when read; ``bad_images`` says what happens (see
:class:`CocoCaptions` and :mod:`vitkit.data.bad_images`).

Training items carry one reference caption drawn at random on every access (COCO has about 5 per image), so
each epoch sees a different mix. The draw uses torch's global generator: ``torch.manual_seed`` /
``lightning.seed_everything`` make it reproducible, and DataLoader workers, which torch seeds one by one, draw
different but reproducible captions.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from vitkit.data.annotations import AnnotationWarning, find_missing_images, format_ids
from vitkit.data.bad_images import BadImageLog, check_policy
from vitkit.data.caption_annotations import check_captions
from vitkit.data.images import ImageReadError, load_rgb

_LAYOUT_HINT = (
    "Expected the COCO 2017 layout: root/train2017/, root/val2017/, "
    "root/annotations/captions_{train,val}2017.json. COCO itself comes from https://cocodataset.org/#download; "
    "a small synthetic set in this layout is made by `python tools/make_shapes.py ROOT`."
)


class CocoCaptions(Dataset):
    """COCO-layout captioning dataset.

    Args:
        root: dataset root holding ``{split}2017/`` and ``annotations/``.
        split: "train" or "val" (any ``NAME`` with ``NAME2017/`` and ``captions_NAME2017.json`` works).
        train: training items (one random reference) or evaluation items (all references and the image id);
            None = ``split == "train"``.
        transforms: a callable on the (3, H, W) uint8 ``tv_tensors.Image`` (e.g. a torchvision ``v2`` pipeline).
        ann_file: caption file overriding ``root/annotations/captions_{split}2017.json``.
        img_folder: image folder overriding ``root/{split}2017``.
        bad_images: "fail" (raise :class:`~vitkit.data.images.ImageReadError` for a missing file at construction
            and for an unreadable one when read) or "skip" (leave missing files out with one counted warning;
            an unreadable item returns ``None`` and is recorded in ``bad_image_log``).

    Raises:
        FileNotFoundError: the caption file or the image folder is missing (the message gives the layout).
        ValueError: the caption file is malformed (see :func:`vitkit.data.annotations.check_captions`: not JSON,
            no ``images``/``annotations``, missing fields, duplicate ids, a caption for an image it does not
            list); the message names the file, the entry and the field.
        ImageReadError: with ``bad_images="fail"``, an image file is missing (naming the file, image id and field).

    Items: with ``train``, ``(image, caption, image_id)``; else ``(image, references, image_id)``. ``image`` is what
    ``transforms`` makes of the uint8 (3, H, W) image (unchanged without transforms), ``caption`` one raw
    reference string, ``references`` all of the image's raw references (list of str), ``image_id`` the COCO id.
    Images without any caption are left out (with a warning). With ``bad_images="skip"``, ``None`` for an
    unreadable image.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", train: bool | None = None,
                 transforms: Any = None, ann_file: str | os.PathLike | None = None,
                 img_folder: str | os.PathLike | None = None, bad_images: str = "fail") -> None:
        root = Path(root)
        self.split = split
        self.bad_images = check_policy(bad_images)
        self.train = split == "train" if train is None else train
        self.transforms = transforms
        self.ann_file = Path(ann_file) if ann_file is not None else root / "annotations" / f"captions_{split}2017.json"
        self.img_folder = Path(img_folder) if img_folder is not None else root / f"{split}2017"
        if not self.ann_file.is_file():
            raise FileNotFoundError(f"COCO caption file not found: {self.ann_file}. {_LAYOUT_HINT}")
        if not self.img_folder.is_dir():
            raise FileNotFoundError(f"COCO image folder not found: {self.img_folder}. {_LAYOUT_HINT}")
        checked = check_captions(self.ann_file, hint=_LAYOUT_HINT, warn=False)
        for note in checked.warnings:
            warnings.warn(note, AnnotationWarning, stacklevel=2)
        self._files, captions = checked.files, checked.captions
        uncaptioned = [image_id for image_id, refs in captions.items() if not refs]
        if uncaptioned:
            warnings.warn(f"{self.ann_file}: {len(uncaptioned)} image(s) have no caption and are left out, "
                          f"e.g. ids {uncaptioned[:5]}", AnnotationWarning, stacklevel=2)
        self._captions = {image_id: refs for image_id, refs in captions.items() if refs}
        if not self._captions:
            raise ValueError(f"{self.ann_file} has no captioned image")
        self.ids: list[int] = self._present_images(sorted(self._captions))
        self.bad_image_log = BadImageLog(len(self.ids), str(self.ann_file))

    def _present_images(self, ids: list[int]) -> list[int]:
        """``ids`` without the images whose file is missing (skip: one counted warning; fail: ImageReadError)."""
        missing_names = find_missing_images(self.img_folder, {self._files[i] for i in ids})
        if not missing_names:
            return ids
        missing = [i for i in ids if self._files[i] in missing_names]
        first = missing[0]
        if self.bad_images == "fail":
            raise ImageReadError(self.img_folder / self._files[first],
                                 f"file not found ({self.ann_file}: image id {first}, field 'file_name'; "
                                 f"{len(missing)} of {len(ids)} image files are missing, ids {format_ids(missing)})")
        kept = [i for i in ids if self._files[i] not in missing_names]
        warnings.warn(f"{self.ann_file}: left out {len(missing)} of {len(ids)} images whose file is missing from "
                      f"{self.img_folder} (ids {format_ids(missing)}; e.g. field 'file_name' "
                      f"{self._files[first]!r}); they are neither trained nor evaluated on", AnnotationWarning,
                      stacklevel=3)
        if not kept:
            raise ValueError(f"{self.ann_file}: none of its {len(ids)} captioned image files is in {self.img_folder}")
        return kept

    @property
    def references(self) -> dict[int, list[str]]:
        """Image id -> raw reference captions, for :func:`vitkit.eval.caption_metrics.caption_metrics` (``gts``)."""
        return {image_id: list(self._captions[image_id]) for image_id in self.ids}

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        """The image file of item ``index``."""
        return self.img_folder / self._files[self.ids[index]]

    def __getitem__(self, index: int) -> tuple[Any, str, int] | tuple[Any, list[str], int] | None:
        image_id = self.ids[index]
        if self.bad_images == "skip" and self.bad_image_log.is_bad(index):
            return None  # known unreadable: not decoded again
        try:
            pil = load_rgb(self.image_path(index))
        except ImageReadError as err:
            if self.bad_images == "fail":
                raise
            self.bad_image_log.record(index, err)
            return None
        image = tv_tensors.Image(F.pil_to_tensor(pil))  # (3, H, W) uint8
        if self.transforms is not None:
            image = self.transforms(image)
        refs = self._captions[image_id]
        if self.train:
            return image, refs[int(torch.randint(len(refs), ()))], image_id
        return image, list(refs), image_id

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(split={self.split!r}, train={self.train}, images={len(self)}, "
                f"ann_file='{self.ann_file}')")
