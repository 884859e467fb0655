"""What the COCO-layout datasets share (:class:`CocoImageSet`): locating a split's annotation file and image folder,
missing image files, and reading an item's image under the ``bad_images`` policy."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset

from vitkit.data.annotations import AnnotationWarning, find_missing_images, format_ids
from vitkit.data.bad_images import BadImageLog, check_policy
from vitkit.data.images import ImageReadError, image_size, load_rgb


def layout_hint(kind: str) -> str:
    """The one-line layout reminder appended to file errors; ``kind``: "instances" or "captions"."""
    return ("Expected the COCO 2017 layout: root/train2017/, root/val2017/, "
            f"root/annotations/{kind}_{{train,val}}2017.json. COCO itself comes from "
            "https://cocodataset.org/#download; a small synthetic set in this layout is made by "
            "`python tools/make_shapes.py ROOT`.")


class CocoImageSet(Dataset):
    """Base of the COCO-layout datasets. Subclasses set :attr:`kind` and :attr:`file_title`, call :meth:`_locate`
    first in ``__init__`` and :meth:`_present_images` once they know their image ids, and read images with
    :meth:`_read`."""

    kind = "instances"  # the annotation file's prefix: {kind}_{split}2017.json
    file_title = "COCO annotation file"  # how a missing annotation file is named

    ann_file: Path
    img_folder: Path
    bad_images: str
    bad_image_log: BadImageLog

    @property
    def layout_hint(self) -> str:
        return layout_hint(self.kind)

    def _locate(self, root: str | os.PathLike, split: str, ann_file: str | os.PathLike | None,
                img_folder: str | os.PathLike | None, bad_images: str) -> None:
        """Set ``split``, ``bad_images``, ``ann_file`` (default ``root/annotations/{kind}_{split}2017.json``) and
        ``img_folder`` (default ``root/{split}2017``); FileNotFoundError (with the layout) when either is missing."""
        root = Path(root)
        self.split = split
        self.bad_images = check_policy(bad_images)
        default_ann = root / "annotations" / f"{self.kind}_{split}2017.json"
        self.ann_file = Path(ann_file) if ann_file is not None else default_ann
        self.img_folder = Path(img_folder) if img_folder is not None else root / f"{split}2017"
        if not self.ann_file.is_file():
            raise FileNotFoundError(f"{self.file_title} not found: {self.ann_file}. {self.layout_hint}")
        if not self.img_folder.is_dir():
            raise FileNotFoundError(f"COCO image folder not found: {self.img_folder}. {self.layout_hint}")

    def _present_images(self, ids: list[int], files: Mapping[int, str]) -> list[int]:
        """``ids`` without the images whose file (``files[id]``) is missing: "skip" leaves them out with one counted
        warning, "fail" raises ImageReadError naming the first; ValueError when none is left. Also starts
        ``bad_image_log`` over the kept ids."""
        kept = ids
        missing_names = find_missing_images(self.img_folder, {files[i] for i in ids})
        if missing_names:
            missing = [i for i in ids if files[i] in missing_names]
            first = missing[0]
            if self.bad_images == "fail":
                raise ImageReadError(self.img_folder / files[first], f"file not found ({self.ann_file}: image id "
                                     f"{first}, field 'file_name'; {len(missing)} of {len(ids)} image files are "
                                     f"missing, ids {format_ids(missing)})")
            kept = [i for i in ids if files[i] not in missing_names]
            warnings.warn(f"{self.ann_file}: left out {len(missing)} of {len(ids)} images whose file is missing from "
                          f"{self.img_folder} (ids {format_ids(missing)}; e.g. field 'file_name' {files[first]!r}); "
                          "they are neither trained nor evaluated on (validation covers the other images only)",
                          AnnotationWarning, stacklevel=3)
            if not kept:
                raise ValueError(f"{self.ann_file}: none of its {len(ids)} image files is in {self.img_folder}")
        self.bad_image_log = BadImageLog(len(kept), str(self.ann_file))
        return kept

    def annotated_size(self, index: int) -> tuple[int, int] | None:
        """Item ``index``'s (width, height) as its annotation file gives it, or None where it gives none (each
        subclass reads its own file)."""
        raise NotImplementedError

    def aspect_ratios(self) -> list[float]:
        """Width / height of every item: the annotation file's sizes, else the image header; 1.0 for an unopenable
        file."""
        ratios = self.__dict__.get("_aspect_ratios")
        if ratios is None:
            ratios = []
            for index in range(len(self)):
                size = self.annotated_size(index) or image_size(self.image_path(index))
                ratios.append(size[0] / size[1] if size is not None and min(size) > 0 else 1.0)
            self._aspect_ratios = ratios
        return list(ratios)

    def _read(self, index: int, path: Path, size_hint: tuple[int, int] | None = None) -> Image.Image | None:
        """Item ``index``'s image through :func:`~vitkit.data.images.load_rgb`; under "skip", None for an image
        that cannot be read (recorded in ``bad_image_log``, and not decoded again); under "fail", ImageReadError."""
        if self.bad_images == "skip" and self.bad_image_log.is_bad(index):
            return None
        try:
            return load_rgb(path, size_hint=size_hint)
        except ImageReadError as err:
            if self.bad_images == "fail":
                raise
            self.bad_image_log.record(index, err)
            return None
