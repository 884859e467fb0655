"""Lightning DataModule for COCO-layout detection data (COCO 2017 or the generated shapes set).

Missing or malformed annotation files raise :class:`~vitkit.training.guards.ConfigError` at construction
(validation file) or ``setup`` (training file); unreadable images follow ``bad_images`` (:mod:`vitkit.data.bad_images`).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from torch.utils.data import DataLoader

from vitkit.data.annotations import read_categories
from vitkit.data.bad_images import SubstituteBad
from vitkit.data.coco import CocoDetection
from vitkit.data.collate import DropNone, collate_detection
from vitkit.data.transforms import DETR_CROP_RESIZE, DETR_SCALES, detr_train_transforms, detr_val_transforms
from vitkit.training.datamodule import CocoLayoutDataModule, data_errors
from vitkit.training.guards import ConfigError


class CocoDataModule(CocoLayoutDataModule):
    """COCO-layout detection data with DETR's augmentation.

    Args:
        batch_size: images per device and step.
        train_scales, train_max_size: shortest-side sizes for multi-scale training, longest-side cap.
        crop_resize, crop_size: shortest sides tried before the random crop, (min, max) side of the crop.
        crop_p: probability of the resize-crop-resize branch in training (0 = never crop).
        val_size, val_max_size: validation shortest side and longest-side cap.
        **kwargs: passed to :class:`~vitkit.training.datamodule.CocoLayoutDataModule`.
    """
    def __init__(
        self,
        *,
        batch_size: int = 2,
        train_scales: list[int] | None = None,
        train_max_size: int = 1333,
        crop_resize: list[int] | None = None,
        crop_size: tuple[int, int] = (384, 600),
        crop_p: float = 0.5,
        val_size: int = 800,
        val_max_size: int = 1333,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        with data_errors():
            cats = read_categories(self.val_annotation_file, hint=self.layout)
        self.label_to_cat_id = [c for c, _ in cats]
        self.class_names = [name for _, name in cats]
        self.num_classes = len(cats)
        self.train_scales = train_scales or list(DETR_SCALES)
        self.crop_resize = crop_resize or list(DETR_CROP_RESIZE)
        self.train_set = self.val_set = None

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        with data_errors():
            if stage in (None, "fit") and self.train_set is None:
                tf = detr_train_transforms(scales=self.train_scales, max_size=hp.train_max_size,
                                           resize_before_crop=self.crop_resize, crop=tuple(hp.crop_size),
                                           crop_p=hp.crop_p)
                self.train_set = CocoDetection(self.root, "train", transforms=tf, bad_images=hp.bad_images)
                if self.train_set.cat_ids != self.label_to_cat_id:
                    raise ConfigError(
                        f"data.root: {self.annotation_file('train')} and {self.val_annotation_file} define different "
                        f"categories (ids {self.train_set.cat_ids} vs {self.label_to_cat_id}); a label would not mean "
                        "the same class in training and validation. Fix: use annotation files that share one "
                        "'categories' list"
                    )
            if self.val_set is None:
                self.val_set = CocoDetection(self.root, "val", bad_images=hp.bad_images,
                                             transforms=detr_val_transforms(size=hp.val_size,
                                                                            max_size=hp.val_max_size))

    def train_dataloader(self) -> DataLoader:
        # an unreadable training image is replaced by the next readable one: batches keep their size and every DDP
        # rank its number of steps
        train = SubstituteBad(self.train_set) if self.hparams.bad_images == "skip" else self.train_set
        return self._loader(train, self._collate, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self._collate, train=False)

    @property
    def _collate(self) -> DropNone:
        return DropNone(partial(collate_detection, pad_to_multiple=self.hparams.pad_to_multiple))
