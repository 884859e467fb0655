"""Detection transform presets: boxes follow flips, resizes and crops; labels stay aligned; output sizes."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from vitkit.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomShortestSideResize,
    RandomSizeCrop,
    detr_train_transforms,
    detr_val_transforms,
    to_model_target,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _sample(h: int, w: int, boxes: list[list[float]], labels: list[int] | None = None,
            image: torch.Tensor | None = None) -> tuple[tv_tensors.Image, dict]:
    img = tv_tensors.Image(torch.zeros(3, h, w, dtype=torch.uint8) if image is None else image)
    target = {
        "boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), format="XYXY",
                                          canvas_size=(h, w)),
        "labels": torch.tensor(list(range(len(boxes))) if labels is None else labels, dtype=torch.int64),
        "image_id": 7,
        "orig_size": torch.tensor([h, w]),
    }
    return img, target


def _unnormalize(image: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return image.as_subclass(torch.Tensor) * std + mean  # back to [0, 1]


@pytest.mark.parametrize("flip", [True, False])
def test_flip_then_resize_moves_box_and_pixels(flip: bool) -> None:
    # 100 x 200 image, one white box [20, 10, 60, 50]
    image = torch.zeros(3, 100, 200, dtype=torch.uint8)
    image[:, 10:50, 20:60] = 255
    img, target = _sample(100, 200, [[20, 10, 60, 50]], labels=[5], image=image)
    t = detr_train_transforms(scales=(50,), max_size=None, hflip_p=1.0 if flip else 0.0, crop_p=0.0)
    out_img, out = t(img, target)
    assert out_img.shape == (3, 50, 100) and out_img.dtype == torch.float32
    # flip: x -> 200 - x gives [140, 10, 180, 50]; resize by 0.5 gives [70, 5, 90, 25]
    expected = [70.0, 5.0, 90.0, 25.0] if flip else [10.0, 5.0, 30.0, 25.0]
    assert isinstance(out["boxes"], tv_tensors.BoundingBoxes) and out["boxes"].canvas_size == (50, 100)
    torch.testing.assert_close(out["boxes"].as_subclass(torch.Tensor), torch.tensor([expected]))
    assert out["labels"].tolist() == [5] and out["image_id"] == 7
    gray = _unnormalize(out_img).mean(0)  # (50, 100)
    x0, y0, x1, y1 = (int(v) for v in expected)
    assert gray[y0 + 1:y1 - 1, x0 + 1:x1 - 1].min() > 0.95  # the white square moved with its box
    assert gray[:, :x0 - 1].max() < 0.05 and gray[:, x1 + 1:].max() < 0.05

    model = to_model_target(out_img, out)
    cx = 0.8 if flip else 0.2
    torch.testing.assert_close(model["boxes"], torch.tensor([[cx, 0.3, 0.2, 0.4]]))
    assert model["size"].tolist() == [50, 100] and model["orig_size"].tolist() == [100, 200]
    assert type(model["boxes"]) is torch.Tensor and model["labels"].dtype == torch.int64


def test_resize_long_side_cap() -> None:
    img, target = _sample(100, 400, [[40, 20, 80, 60]])
    out_img, out = RandomShortestSideResize([200], max_size=600)(img, target)
    # 100 -> 200 would make the long side 800 > 600: long side 600, short side 150, scale 1.5
    assert out_img.shape[-2:] == (150, 600)
    torch.testing.assert_close(out["boxes"].as_subclass(torch.Tensor), torch.tensor([[60.0, 30.0, 120.0, 90.0]]))
    with pytest.raises(ValueError, match="max_size"):
        RandomShortestSideResize([200, 600], max_size=600)


@pytest.mark.parametrize(("hw", "expected"), [
    ((100, 200), (208, 416)),
    ((300, 100), (600, 200)),  # 208 -> long 624 > 600: capped
    ((1399, 1500), (208, 223)),  # v2.RandomShortestSize gives a short side of 207 here
    ((208, 250), (208, 250)),
])
def test_val_transform_sizes(hw: tuple[int, int], expected: tuple[int, int]) -> None:
    img, target = _sample(*hw, [[0, 0, 10, 10]])
    out_img, out = detr_val_transforms(size=208, max_size=600)(img, target)
    assert tuple(out_img.shape[-2:]) == expected
    assert out["boxes"].canvas_size == expected
    assert out_img.dtype == torch.float32


def test_val_transform_rule_over_many_sizes() -> None:
    t = detr_val_transforms(size=192, max_size=320)
    for h, w in [(160, 224), (224, 160), (100, 400), (191, 193), (777, 301), (64, 64)]:
        out_img, _ = t(*_sample(h, w, []))
        short, long = sorted(out_img.shape[-2:])
        assert (short == 192 and long <= 320) or (long == 320 and short <= 192), (h, w, short, long)


def test_crop_drops_outside_boxes_and_keeps_labels_aligned() -> None:
    h, w = 80, 120
    coords = torch.zeros(3, h, w, dtype=torch.uint8)
    coords[0] = torch.arange(w, dtype=torch.uint8)[None, :]  # channel 0 encodes x, channel 1 y
    coords[1] = torch.arange(h, dtype=torch.uint8)[:, None]
    boxes = [[0, 0, 12, 10], [100, 65, 120, 80], [50, 30, 70, 50], [5, 60, 30, 78], [90, 0, 118, 15], [40, 5, 44, 9]]
    labels = [10, 11, 12, 13, 14, 15]
    t = v2.Compose([RandomSizeCrop(40, 60), v2.SanitizeBoundingBoxes(min_size=1)])
    dropped = kept = 0
    for seed in range(40):
        torch.manual_seed(seed)
        out_img, out = t(*_sample(h, w, boxes, labels, image=coords.clone()))
        ch, cw = out_img.shape[-2:]
        assert 40 <= ch <= 60 and 40 <= cw <= 60
        left, top = int(out_img[0, 0, 0]), int(out_img[1, 0, 0])  # where the window was taken
        exp_boxes, exp_labels = [], []
        for (x0, y0, x1, y1), label in zip(boxes, labels, strict=True):
            b = [min(max(x0 - left, 0), cw), min(max(y0 - top, 0), ch), min(max(x1 - left, 0), cw),
                 min(max(y1 - top, 0), ch)]
            if b[2] - b[0] >= 1 and b[3] - b[1] >= 1:
                exp_boxes.append(b)
                exp_labels.append(label)
        assert out["labels"].tolist() == exp_labels
        torch.testing.assert_close(out["boxes"].as_subclass(torch.Tensor),
                                   torch.tensor(exp_boxes, dtype=torch.float32).reshape(-1, 4))
        dropped += len(boxes) - len(exp_labels)
        kept += len(exp_labels)
    assert dropped > 0 and kept > 0


def test_crop_smaller_image_than_min_size() -> None:
    img, target = _sample(30, 50, [[1, 1, 20, 20]])
    out_img, out = RandomSizeCrop(40, 60)(img, target)
    ch, cw = out_img.shape[-2:]
    assert ch == 30 and 40 <= cw <= 50  # the short side is kept whole
    assert out["boxes"].canvas_size == (ch, cw)


def test_train_transforms_crop_branch_keeps_targets_consistent() -> None:
    t = detr_train_transforms(scales=(160, 192), max_size=320, crop=(96, 160), resize_before_crop=(160, 192),
                              crop_p=1.0)
    boxes = [[10, 10, 40, 40], [150, 100, 190, 170], [80, 60, 120, 100], [0, 150, 30, 180]]
    for seed in range(20):
        torch.manual_seed(seed)
        out_img, out = t(*_sample(180, 200, boxes, labels=[3, 1, 0, 2]))
        hh, ww = out_img.shape[-2:]
        assert min(hh, ww) in (160, 192) or max(hh, ww) == 320
        b = out["boxes"].as_subclass(torch.Tensor)
        assert b.shape == (len(out["labels"]), 4)
        assert (b[:, 2] - b[:, 0] >= 1).all() and (b[:, 3] - b[:, 1] >= 1).all()
        assert (b >= 0).all() and (b[:, 0::2] <= ww).all() and (b[:, 1::2] <= hh).all()
        assert set(out["labels"].tolist()) <= {0, 1, 2, 3}


def test_to_model_target_accepts_other_box_formats() -> None:
    img = tv_tensors.Image(torch.zeros(3, 10, 20))
    target = {"boxes": tv_tensors.BoundingBoxes([[2.0, 3.0, 4.0, 5.0]], format="XYWH", canvas_size=(10, 20)),
              "labels": torch.tensor([1]), "image_id": 3, "orig_size": torch.tensor([10, 20])}
    out = to_model_target(img, target)
    torch.testing.assert_close(out["boxes"], torch.tensor([[4 / 20, 5.5 / 10, 4 / 20, 5 / 10]]))
