"""Object labels on the captioner's image tokens: a training-only auxiliary loss where boxes exist.

:class:`WithObjects` adds ``{"boxes": (n, 4) xyxy normalised to the image, "labels": (n,)}`` to training items;
:class:`ObjectTokenHead` classifies each memory token into its categories or background.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from vitkit.data.annotations import Instances
from vitkit.data.collate import real_size

IGNORE = -100  # target of a padding token, or of any token of an image the instances file does not list
BACKGROUND_WEIGHT = 0.2  # cross-entropy weight of background tokens (most tokens are background)
Objects = dict[str, Tensor]  # {"boxes": (n, 4) xyxy in [0, 1] of the image, "labels": (n,) long}


class WithObjects(Dataset):
    """Training items ``(image, caption, image_id)`` -> ``(image, caption, image_id, objects)``.

    Args:
        dataset: the caption training set.
        instances: the checked instances file of the same images.

    ``objects`` is an :data:`Objects` dict of the image's non-crowd boxes; None for an image the file does not list.
    """

    def __init__(self, dataset: Dataset, instances: Instances) -> None:
        self.dataset, self.instances = dataset, instances
        self.label_of = {cat_id: k for k, (cat_id, _) in enumerate(instances.categories)}

    def __len__(self) -> int:
        return len(self.dataset)

    def objects(self, image_id: int) -> Objects | None:
        """The image's boxes and labels (see the class docstring)."""
        inst = self.instances
        if image_id not in inst.images:
            return None
        _, width, height = inst.images[image_id]
        start, end = inst.spans.get(image_id, (0, 0))
        boxes = torch.from_numpy(inst.boxes[start:end].copy()) / torch.tensor([width, height, width, height])
        labels = torch.tensor([self.label_of[int(c)] for c in inst.box_cat_ids[start:end]], dtype=torch.long)
        return {"boxes": boxes.view(-1, 4), "labels": labels}

    def __getitem__(self, index: int) -> tuple[Any, str, int, Objects | None]:
        image, caption, image_id = self.dataset[index]
        return image, caption, image_id, self.objects(int(image_id))


def mirror_objects(objects: Objects | None) -> Objects | None:
    """The objects of the left-right mirrored image (normalised x -> 1 - x)."""
    if objects is None:
        return None
    boxes = objects["boxes"].clone()
    boxes[:, 0], boxes[:, 2] = 1 - objects["boxes"][:, 2], 1 - objects["boxes"][:, 0]
    return {"boxes": boxes, "labels": objects["labels"]}


def token_targets(objects: list[Objects | None], grid: tuple[int, int], pixel_mask: Tensor,
                  background: int) -> Tensor:
    """The object label of every image token: the smallest box that holds the token's centre, else background.

    Args:
        objects: per image, its :data:`Objects` or None (all its tokens ignored).
        grid: (h, w) token grid over the padded batch.
        pixel_mask: (B, H, W) bool, True = padding (images top-left).
        background: the background label (the number of categories).

    Returns:
        (B, h*w) long labels, row-major; :data:`IGNORE` for tokens whose centre lies in the padding.
    """
    B, H, W = pixel_mask.shape
    h, w = grid
    dev = pixel_mask.device
    cy = ((torch.arange(h, device=dev) + 0.5) * (H / h)).view(h, 1)  # (h, 1) px of the padded frame
    cx = ((torch.arange(w, device=dev) + 0.5) * (W / w)).view(1, w)  # (1, w)
    widths, heights = real_size(pixel_mask[:, None], pixel_mask).unbind(1)  # (B,) each, px of the real image
    out = torch.full((B, h, w), background, dtype=torch.long, device=dev)
    for b, obj in enumerate(objects):
        if obj is None:
            out[b] = IGNORE
            continue
        scale = torch.stack([widths[b], heights[b], widths[b], heights[b]]).to(obj["boxes"])  # (4,)
        boxes = obj["boxes"].to(dev) * scale  # (n, 4) px
        if len(boxes):
            order = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).argsort()  # smallest first
            boxes, labels = boxes[order], obj["labels"].to(dev)[order]
            inside = ((cx >= boxes[:, 0, None, None]) & (cx < boxes[:, 2, None, None])
                      & (cy >= boxes[:, 1, None, None]) & (cy < boxes[:, 3, None, None]))  # (n, h, w)
            first = inside.to(torch.uint8).argmax(0)  # (h, w) index of the smallest holding box
            out[b] = torch.where(inside.any(0), labels[first], out[b])
        out[b].masked_fill_((cy >= heights[b]) | (cx >= widths[b]), IGNORE)
    return out.flatten(1)


class ObjectTokenHead(nn.Module):
    """A linear classifier of (dim D) memory tokens into C = ``num_classes`` categories + background (label C)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.proj = nn.Linear(dim, num_classes + 1)
        weight = torch.ones(num_classes + 1)
        weight[num_classes] = BACKGROUND_WEIGHT
        self.register_buffer("class_weight", weight, persistent=False)

    def forward(self, tokens: Tensor) -> Tensor:
        """(B, N, D) -> (B, N, C + 1) logits."""
        return self.proj(tokens)

    def loss(self, memory: Tensor, num_prefix: int, grid: tuple[int, int], pixel_mask: Tensor,
             objects: list[Objects | None]) -> Tensor:
        """Weighted cross-entropy of the grid tokens' labels, mean over the counted tokens.

        Args:
            memory: (B, P + h*w, D) caption memory, prefix tokens first (not classified).
            grid: (h, w); pixel_mask: (B, H, W) True = padding; objects: per image, its objects or None.

        Returns:
            () fp32 loss; 0 (with a graph) when no token is counted.
        """
        logits = self(memory[:, num_prefix:]).float()  # (B, h*w, C+1)
        target = token_targets(objects, grid, pixel_mask, self.num_classes)  # (B, h*w)
        if not bool((target != IGNORE).any()):
            return logits.sum() * 0.0
        return F.cross_entropy(logits.flatten(0, 1), target.flatten(), weight=self.class_weight, ignore_index=IGNORE)
