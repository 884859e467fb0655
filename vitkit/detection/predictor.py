"""Ready-to-use inference wrappers returned by :func:`vitkit.load`."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from PIL import Image
from torch import Tensor, nn

from vitkit.detection.preprocess import DetectionPreprocess
from vitkit.kernels.precision import apply_precision, model_dtype


class Detector(nn.Module):
    """A DETR-style detector with its preprocessing, post-processing and category names; outputs are float32.

    Args:
        model: the detector network (``forward(images, mask) -> dict``).
        postprocess: ``PostProcess`` turning outputs into per-image xyxy pixel detections.
        class_names: name per contiguous label.
        label_to_cat_id: dataset category id per contiguous label.
        size, max_size: shortest-side resize and longest-side cap used at inference (``max_size`` must exceed
            ``size``, or be None).
    """
    def __init__(self, model: nn.Module, postprocess: nn.Module, class_names: Sequence[str] | None = None,
                 label_to_cat_id: Sequence[int] | None = None, size: int = 800, max_size: int | None = 1333) -> None:
        super().__init__()
        self.model, self.postprocess = model, postprocess
        self.class_names = list(class_names) if class_names else None
        self.label_to_cat_id = list(label_to_cat_id) if label_to_cat_id else None
        self.preprocessing = DetectionPreprocess(size, max_size)

    @property
    def size(self) -> int:
        """Short side in px of the preprocessed images."""
        return self.preprocessing.size

    @property
    def max_size(self) -> int | None:
        """Cap on the long side in px of the preprocessed images, or None."""
        return self.preprocessing.max_size

    def set_precision(self, precision: str) -> Detector:
        """Run the network in ``"bf16"``, ``"fp32"`` or ``"auto"`` (bf16 where the hardware is fast at it).

        bf16 folds the frozen BatchNorms into the convs, changing the network's state_dict.
        """
        apply_precision(self.model, precision)
        return self

    def run(self, batch: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """The network on a preprocessed batch, in its weights' dtype; floating outputs come back float32."""
        param = next(self.model.parameters())
        out = self.model(batch.to(param.device, model_dtype(self.model)), mask.to(param.device))
        return {k: v.float() if isinstance(v, Tensor) and v.is_floating_point() else v for k, v in out.items()}

    def label_text(self, labels: Sequence[int]) -> list[str]:
        """Display names of labels: the class names, or the label numbers as text when the detector has none."""
        return [self.class_names[j] for j in labels] if self.class_names else [str(j) for j in labels]

    def preprocess(self, images: Sequence[str | os.PathLike | Image.Image | Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Paths / PIL images / (3,H,W) tensors -> padded batch (B,3,H,W), mask (B,H,W), original sizes (B,2)."""
        return self.preprocessing.batch(images)

    @torch.no_grad()
    def predict(self, images, score_threshold: float = 0.5, batch_size: int = 8) -> list[dict]:
        """Detect objects in one or a list of image paths, PIL images (any mode) or (3, H, W) uint8/float tensors,
        ``batch_size`` per forward, dropping detections scoring below ``score_threshold``.

        Returns:
            One dict per image: ``boxes`` (K, 4) xyxy pixels of the original image, ``scores`` (K,),
            ``labels`` (K,) contiguous labels, ``label_names`` (K names), ``category_ids`` (K dataset ids).
        """
        if not isinstance(images, list | tuple):
            images = [images]
        self.eval()
        device = next(self.model.parameters()).device
        out = []
        for i in range(0, len(images), batch_size):
            batch, mask, sizes = self.preprocess(images[i: i + batch_size])
            dets = self.postprocess(self.run(batch, mask), sizes.to(device))
            for d in dets:
                keep = d["scores"] >= score_threshold
                d = {k: v[keep].cpu() for k, v in d.items()}
                labels = d["labels"].tolist()
                d["label_names"] = [self.class_names[j] for j in labels] if self.class_names else labels
                d["category_ids"] = [self.label_to_cat_id[j] for j in labels] if self.label_to_cat_id else labels
                out.append(d)
        return out
