"""COCO-layout detection dataset.

Reads ``root/annotations/instances_{split}2017.json`` (through pycocotools) and ``root/{split}2017/``. Any
dataset in that layout works: category ids need not be contiguous (they are sorted and mapped to labels
0..C-1, and ``num_classes`` is C, read from the file), images without annotations are kept with empty
targets, and ``iscrowd=1`` regions are left out of the targets (COCOeval, run on the original file, treats
them as ignore regions).

Each sample is decoded once (PIL, EXIF orientation applied, RGB), wrapped as ``tv_tensors.Image`` with a target
of ``tv_tensors.BoundingBoxes`` (XYXY pixels) + labels, passed through ``transforms`` and finally converted to
the model contract by :func:`vitkit.data.transforms.to_model_target`.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from vitkit.data.transforms import to_model_target

_LAYOUT_HINT = (
    "Expected the COCO 2017 layout: root/train2017/, root/val2017/, "
    "root/annotations/instances_{train,val}2017.json. COCO itself comes from https://cocodataset.org/#download; "
    "a small synthetic set in this layout is made by `python tools/make_shapes.py ROOT`."
)


class CocoDetection(Dataset):
    """COCO-layout detection dataset returning model-ready targets.

    Args:
        root: dataset root holding ``{split}2017/`` and ``annotations/``.
        split: "train" or "val" (any name ``NAME`` with ``NAME2017/`` and ``instances_NAME2017.json`` works).
        transforms: a callable ``(image, target) -> (image, target)`` (e.g. a ``v2`` preset from
            :mod:`vitkit.data.transforms`); ``target["boxes"]`` is ``BoundingBoxes`` in XYXY pixels.
        ann_file: annotation file overriding ``root/annotations/instances_{split}2017.json``.
        img_folder: image folder overriding ``root/{split}2017``.

    Raises:
        FileNotFoundError: the annotation file or the image folder is missing (message gives the expected layout).

    Each item is ``(image, target)``: ``image`` (3, H, W) ``tv_tensors.Image`` (uint8 without transforms, else
    what the transforms make) and ``target`` with ``boxes`` (n, 4) float32 normalised cxcywh, ``labels`` (n,)
    int64 in 0..C-1, ``image_id`` int, ``orig_size`` (2,) int64 [h, w] as decoded, ``size`` (2,) int64 [h, w]
    after the transforms.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", transforms: Any = None,
                 ann_file: str | os.PathLike | None = None, img_folder: str | os.PathLike | None = None) -> None:
        root = Path(root)
        self.split = split
        self.ann_file = Path(ann_file) if ann_file is not None else root / "annotations" / f"instances_{split}2017.json"
        self.img_folder = Path(img_folder) if img_folder is not None else root / f"{split}2017"
        if not self.ann_file.is_file():
            raise FileNotFoundError(f"COCO annotation file not found: {self.ann_file}. {_LAYOUT_HINT}")
        if not self.img_folder.is_dir():
            raise FileNotFoundError(f"COCO image folder not found: {self.img_folder}. {_LAYOUT_HINT}")
        self.transforms = transforms
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco = COCO(str(self.ann_file))
        self.ids: list[int] = sorted(self.coco.imgs)
        self._cat_ids: list[int] = sorted(self.coco.getCatIds())
        if not self._cat_ids:
            raise ValueError(f"{self.ann_file} defines no categories")
        self._cat_id_to_label = {cat_id: label for label, cat_id in enumerate(self._cat_ids)}

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
        return [self.coco.cats[c]["name"] for c in self._cat_ids]

    # ------------------------------------------------------------------ samples

    def __len__(self) -> int:
        return len(self.ids)

    def _load_image(self, info: dict[str, Any]) -> Image.Image:
        """Decode once; apply the EXIF orientation unless the file's (h, w) says annotations use the raw one."""
        path = self.img_folder / info["file_name"]
        with Image.open(path) as raw:
            raw.load()
            expected = (info.get("width"), info.get("height"))
            img = ImageOps.exif_transpose(raw)
            if img.size != expected and raw.size == expected:
                img = raw  # annotated in stored pixel order, as some COCO files are
            return img.convert("RGB")

    def _raw_target(self, image_id: int, height: int, width: int) -> dict[str, Any]:
        anns = self.coco.imgToAnns.get(image_id, [])
        boxes, labels = [], []
        for ann in anns:
            if ann.get("iscrowd", 0):
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            boxes.append([x, y, x + w, y + h])
            labels.append(self._cat_id_to_label[ann["category_id"]])
        xyxy = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)  # (n, 4)
        xyxy[:, 0::2].clamp_(0, width)
        xyxy[:, 1::2].clamp_(0, height)
        keep = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])  # drop degenerate boxes, as DETR does
        return {
            "boxes": tv_tensors.BoundingBoxes(xyxy[keep], format="XYXY", canvas_size=(height, width)),
            "labels": torch.tensor(labels, dtype=torch.int64)[keep],
            "image_id": image_id,
            "orig_size": torch.tensor([height, width], dtype=torch.int64),
        }

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        image_id = self.ids[index]
        pil = self._load_image(self.coco.imgs[image_id])
        image = tv_tensors.Image(F.pil_to_tensor(pil))  # (3, H, W) uint8
        target = self._raw_target(image_id, pil.height, pil.width)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, to_model_target(image, target)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(split={self.split!r}, images={len(self)}, classes={self.num_classes}, "
                f"ann_file='{self.ann_file}')")
