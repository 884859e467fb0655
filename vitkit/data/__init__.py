"""Data: COCO-layout detection datasets, the synthetic shapes generator, v2 transform presets, collation."""

from vitkit.data.coco import CocoDetection
from vitkit.data.collate import collate_detection, pad_images
from vitkit.data.shapes import ensure_shapes, make_shapes
from vitkit.data.transforms import (
    DETR_SCALES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomShortestSideResize,
    RandomSizeCrop,
    detr_train_transforms,
    detr_val_transforms,
    to_model_target,
)

__all__ = [
    "DETR_SCALES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CocoDetection",
    "RandomShortestSideResize",
    "RandomSizeCrop",
    "collate_detection",
    "detr_train_transforms",
    "detr_val_transforms",
    "ensure_shapes",
    "make_shapes",
    "pad_images",
    "to_model_target",
]
