"""COCO-layout captioning dataset.

Reads ``root/annotations/captions_{split}2017.json`` and the images in ``root/{split}2017/``. Images are decoded
once per access by :func:`vitkit.data.folder.load_rgb` (EXIF orientation applied, any mode to 8-bit RGB) and
wrapped as a uint8 ``tv_tensors.Image`` (3, H, W), as :class:`vitkit.data.coco.CocoDetection` does, then passed
through ``transforms``.

Training items carry one reference caption drawn at random on every access (COCO has about 5 per image), so
each epoch sees a different mix. The draw uses torch's global generator: ``torch.manual_seed`` /
``lightning.seed_everything`` make it reproducible, and DataLoader workers, which torch seeds one by one, draw
different but reproducible captions.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from vitkit.data.folder import load_rgb

_LAYOUT_HINT = (
    "Expected the COCO 2017 layout: root/train2017/, root/val2017/, "
    "root/annotations/captions_{train,val}2017.json. COCO itself comes from https://cocodataset.org/#download; "
    "a small synthetic set in this layout is made by `python tools/make_shapes.py ROOT`."
)


def _read_captions(path: Path) -> tuple[dict[int, str], dict[int, list[str]]]:
    """(image id -> file name, image id -> captions in file order) from a COCO captions file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"COCO caption file {path} is not valid JSON: {exc}") from exc
    for key in ("images", "annotations"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise ValueError(f"COCO caption file {path} has no '{key}' list. {_LAYOUT_HINT}")
    files: dict[int, str] = {}
    for k, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            raise ValueError(f"{path}: images[{k}] needs 'id' and 'file_name'")
        if img["id"] in files:
            raise ValueError(f"{path}: image id {img['id']!r} appears twice in 'images'")
        files[img["id"]] = img["file_name"]
    captions: dict[int, list[str]] = {image_id: [] for image_id in files}
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
            raise ValueError(f"{path}: annotations[{k}] needs 'image_id' and 'caption' (is this an instances_*.json "
                             "rather than a captions_*.json file?)")
        if ann["image_id"] not in captions:
            raise ValueError(f"{path}: annotations[{k}] refers to image id {ann['image_id']!r}, which is not in "
                             "'images'")
        if not isinstance(ann["caption"], str):
            raise ValueError(f"{path}: annotations[{k}] has a non-string caption: {ann['caption']!r}")
        captions[ann["image_id"]].append(ann["caption"])
    return files, captions


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

    Raises:
        FileNotFoundError: the caption file or the image folder is missing (the message gives the layout).
        ValueError: the caption file is not JSON, lacks ``images``/``annotations`` or their keys, or has a
            caption for an image it does not list; the message names the file.

    Items: with ``train``, ``(image, caption)``; else ``(image, references, image_id)``. ``image`` is what
    ``transforms`` makes of the uint8 (3, H, W) image (unchanged without transforms), ``caption`` one raw
    reference string, ``references`` all of the image's raw references (list of str), ``image_id`` the COCO id.
    Images without any caption are left out (with a warning). A missing or unreadable image file raises
    :class:`vitkit.data.folder.ImageReadError` naming it.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", train: bool | None = None,
                 transforms: Any = None, ann_file: str | os.PathLike | None = None,
                 img_folder: str | os.PathLike | None = None) -> None:
        root = Path(root)
        self.split = split
        self.train = split == "train" if train is None else train
        self.transforms = transforms
        self.ann_file = Path(ann_file) if ann_file is not None else root / "annotations" / f"captions_{split}2017.json"
        self.img_folder = Path(img_folder) if img_folder is not None else root / f"{split}2017"
        if not self.ann_file.is_file():
            raise FileNotFoundError(f"COCO caption file not found: {self.ann_file}. {_LAYOUT_HINT}")
        if not self.img_folder.is_dir():
            raise FileNotFoundError(f"COCO image folder not found: {self.img_folder}. {_LAYOUT_HINT}")
        self._files, captions = _read_captions(self.ann_file)
        uncaptioned = [image_id for image_id, refs in captions.items() if not refs]
        if uncaptioned:
            warnings.warn(f"{self.ann_file}: {len(uncaptioned)} image(s) have no caption and are left out, "
                          f"e.g. ids {uncaptioned[:5]}", stacklevel=2)
        self._captions = {image_id: refs for image_id, refs in captions.items() if refs}
        if not self._captions:
            raise ValueError(f"{self.ann_file} has no captioned image")
        self.ids: list[int] = sorted(self._captions)

    @property
    def references(self) -> dict[int, list[str]]:
        """Image id -> raw reference captions, for :func:`vitkit.eval.caption_metrics.caption_metrics` (``gts``)."""
        return {image_id: list(self._captions[image_id]) for image_id in self.ids}

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Any, str] | tuple[Any, list[str], int]:
        image_id = self.ids[index]
        pil = load_rgb(self.img_folder / self._files[image_id])
        image = tv_tensors.Image(F.pil_to_tensor(pil))  # (3, H, W) uint8
        if self.transforms is not None:
            image = self.transforms(image)
        refs = self._captions[image_id]
        if self.train:
            return image, refs[int(torch.randint(len(refs), ()))]
        return image, list(refs), image_id

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(split={self.split!r}, train={self.train}, images={len(self)}, "
                f"ann_file='{self.ann_file}')")
