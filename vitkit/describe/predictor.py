"""Describer: a :class:`~vitkit.describe.model.DescribeModel` with its preprocessing, tokenizer and settings.

Made of a :class:`~vitkit.detection.predictor.Detector` and a :class:`~vitkit.captioning.predictor.CaptionPipeline`.
Boxes at this boundary are xyxy pixels of the original (upright) image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn
from torchvision.ops import box_convert

from vitkit.captioning.predictor import CaptionPipeline
from vitkit.captioning.tokenizer import CaptionTokenizer
from vitkit.describe.model import DescribeModel
from vitkit.detection.postprocess import PostProcess, from_pixels, to_pixels
from vitkit.detection.predictor import Detector
from vitkit.kernels.precision import apply_precision, model_dtype

ImageInput = str | os.PathLike | Image.Image | Tensor


def as_box_lists(boxes: Sequence[Any], count: int) -> list[Tensor]:
    """Per image (n, 4) float32 xyxy pixel boxes from tensors, arrays or nested lists.

    Raises:
        ValueError: not one entry per image, an entry that is not (n, 4), or a box with x1 < x0 or y1 < y0.
    """
    if len(boxes) != count:
        raise ValueError(f"boxes: give one list of boxes per image ({count} images), got {len(boxes)}")
    out = []
    for i, b in enumerate(boxes):
        t = torch.as_tensor(b, dtype=torch.float32) if len(b) else torch.zeros(0, 4)
        if t.shape[-1:] != (4,) or t.numel() % 4:
            raise ValueError(f"boxes[{i}]: expected (n, 4) xyxy pixel boxes, got shape {tuple(t.shape)}")
        t = t.reshape(-1, 4)
        if bool(((t[:, 2:] < t[:, :2]) | ~t.isfinite().all(dim=1, keepdim=True)).any()):
            raise ValueError(f"boxes[{i}]: every box must be finite xyxy pixels with x1 >= x0 and y1 >= y0")
        out.append(t)
    return out


class Describer(nn.Module):
    """Images in; boxes, classes, scores and a caption per box out.

    Args:
        model: the describe network.
        tokenizer: the region tokenizer it was trained with.
        class_names: name per contiguous label, or None.
        label_to_cat_id: dataset category id per contiguous label, or None.
        num_select: detections kept per image at most (the default ``max_detections``).
        size, max_size: shortest-side resize and longest-side cap at inference, in px.
        generation: caption decoding defaults.

    Raises:
        ValueError: the tokenizer does not fit the text decoder, or an unknown generation option.
    """

    def __init__(self, model: DescribeModel, tokenizer: CaptionTokenizer, class_names: Sequence[str] | None = None,
                 label_to_cat_id: Sequence[int] | None = None, num_select: int = 100, size: int = 800,
                 max_size: int | None = 1333, generation: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.model = model
        post = PostProcess(sigmoid=bool(model.detector.sigmoid_head), num_select=num_select)
        self.detector = Detector(model.detector, post, class_names, label_to_cat_id, size, max_size)
        self.captions = CaptionPipeline(model.head.text, tokenizer, size, max_size, generation)

    @property
    def tokenizer(self) -> CaptionTokenizer:
        return self.captions.tokenizer

    @property
    def size(self) -> int:
        return self.detector.size

    @property
    def max_size(self) -> int | None:
        return self.detector.max_size

    @property
    def class_names(self) -> list[str] | None:
        return self.detector.class_names

    @property
    def label_to_cat_id(self) -> list[int] | None:
        return self.detector.label_to_cat_id

    @property
    def num_select(self) -> int:
        return self.detector.postprocess.num_select

    @property
    def generation(self) -> dict[str, Any]:
        return self.captions.generation

    def set_precision(self, precision: str) -> Describer:
        """Run the detector in ``"bf16"``, ``"fp32"`` or ``"auto"``; the region caption head stays float32."""
        apply_precision(self.model.detector, precision)
        return self

    def preprocess(self, images: Sequence[ImageInput]) -> tuple[Tensor, Tensor, Tensor]:
        """Paths / PIL images / (3, H, W) tensors -> padded batch (B, 3, H, W), mask (B, H, W), original sizes (B, 2)
        [h, w]: :meth:`Detector.preprocess`."""
        return self.detector.preprocess(images)

    def describe_batch(self, images: Tensor, mask: Tensor, sizes: Tensor, boxes: list[Tensor] | None = None,
                       threshold: float = 0.5, max_detections: int | None = None,
                       **options: Any) -> list[dict[str, Any]]:
        """Describe a preprocessed batch (:meth:`preprocess`).

        Args:
            images: (B, 3, H, W) normalised, zero-padded; mask: (B, H, W) True = padding.
            sizes: (B, 2) [h, w] of the original images, in px.
            boxes: per image (n, 4) xyxy pixel boxes to caption instead of detecting, or None.
            threshold, max_detections: detections kept per image (not used with ``boxes``).
            **options: generation options over the defaults.

        Returns:
            Per image, as :meth:`describe`.
        """
        opts = self.captions.generation_options(**options)
        param = next(self.model.detector.parameters())
        images, mask = images.to(param.device, model_dtype(self.model.detector)), mask.to(param.device)
        given = None
        if boxes is not None:
            given = [from_pixels(b.to(param.device, torch.float32), sizes[i].to(param.device))
                     for i, b in enumerate(as_box_lists(boxes, len(images)))]
        self.eval()
        found = self.model.describe(images, mask, boxes=given, threshold=threshold,
                                    max_detections=self.num_select if max_detections is None else max_detections,
                                    **opts)
        out = []
        for i, d in enumerate(found):
            if boxes is None:
                xyxy = to_pixels(box_convert(d["boxes"].float(), "cxcywh", "xyxy"), sizes[i].to(d["boxes"].device))
            else:
                xyxy = torch.as_tensor(boxes[i], dtype=torch.float32).reshape(-1, 4)
            labels = d["labels"].cpu()
            out.append({"boxes": xyxy.cpu(), "scores": d["scores"].float().cpu(), "labels": labels,
                        "label_names": self.detector.label_text(labels.tolist()),
                        "category_ids": [self.label_to_cat_id[j] for j in labels.tolist()] if self.label_to_cat_id
                        else labels.tolist(),
                        "captions": self.tokenizer.decode_batch(d["ids"].cpu()) if len(labels) else []})
        return out

    @torch.no_grad()
    def describe(self, images: ImageInput | Sequence[ImageInput], boxes: Sequence[Any] | None = None,
                 threshold: float = 0.5, max_detections: int | None = None, batch_size: int = 8,
                 method: str | None = None, num_beams: int | None = None, max_length: int | None = None,
                 **options: Any) -> list[dict[str, Any]]:
        """Find the objects of images and caption each (or caption the ``boxes`` given).

        Args:
            images: one or a list of image paths, PIL images or (3, H, W) uint8 / [0, 1] float tensors.
            boxes: per image, its (n, 4) xyxy pixel boxes (tensor, array or nested list), captioned instead of
                detections. One image may take its (n, 4) boxes directly.
            threshold: keep detections whose best class scores at least this (not used with ``boxes``).
            max_detections: at most this many detections per image (default: the checkpoint's ``num_select``).
            batch_size: images per forward pass.
            method, num_beams, max_length, **options: caption decoding.

        Returns:
            One dict per image: ``boxes`` (n, 4) float32 xyxy pixels (given boxes as given), ``scores`` (n,),
            ``labels`` (n,) contiguous labels (for given boxes: those of the most-overlapping query), ``label_names``
            (n), ``category_ids`` (n), ``captions`` (n strings).

        Raises:
            ImageReadError: a path cannot be read.
            ValueError: bad boxes or generation options.
        """
        single = not isinstance(images, list | tuple)
        images = [images] if single else list(images)
        if boxes is not None:
            boxes = [boxes] if single else boxes
            boxes = as_box_lists(boxes, len(images))
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        options = dict(options, method=method, num_beams=num_beams, max_length=max_length)
        self.captions.generation_options(**options)  # fail on bad options before reading any image
        out: list[dict[str, Any]] = []
        for i in range(0, len(images), batch_size):
            batch, mask, sizes = self.preprocess(images[i: i + batch_size])
            out.extend(self.describe_batch(batch, mask, sizes, None if boxes is None else boxes[i: i + batch_size],
                                           threshold, max_detections, **options))
        return out

    def extra_repr(self) -> str:
        return f"size={self.size}, max_size={self.max_size}, generation={self.generation}"
