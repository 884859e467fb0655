"""Label-safe augmentation: the default caption transforms never contradict a caption that names objects in
left-to-right order (no mirroring, no crop that loses an object); mirroring is opt-in and swaps the words."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.support.configs import CONFIGS
from vitkit.captioning.datamodule import CaptionDataModule
from vitkit.data.collate import rescale_batch

COLOURS = {"red": (230, 30, 30), "blue": (30, 30, 230)}


def _ordered_set(root, count=6):
    """Images with a red and a blue square in random left-to-right order; the caption lists them left to right
    without saying so (the convention a flip breaks)."""
    rng = np.random.default_rng(0)
    images, anns = [], []
    for split in ("train", "val"):
        (root / f"{split}2017").mkdir(parents=True)
    for i in range(1, count + 1):
        h, w = int(rng.integers(120, 200)), int(rng.integers(160, 260))
        pixels = np.full((h, w, 3), 128, np.uint8)
        order = ["red", "blue"] if rng.random() < 0.5 else ["blue", "red"]
        for slot, colour in enumerate(order):
            x0 = int(w * (0.08 + 0.5 * slot)) + int(rng.integers(0, w // 10))
            y0 = int(rng.integers(5, h - 45))
            pixels[y0:y0 + 36, x0:x0 + 36] = COLOURS[colour]
        for split in ("train", "val"):
            Image.fromarray(pixels).save(root / f"{split}2017" / f"{i:012d}.png")
        images.append({"id": i, "file_name": f"{i:012d}.png", "height": h, "width": w})
        anns.append({"id": i, "image_id": i, "caption": f"a {order[0]} square and a {order[1]} square",
                     "size": (h, w)})
    (root / "annotations").mkdir()
    for split in ("train", "val"):
        doc = {"images": images, "annotations": anns}
        (root / "annotations" / f"captions_{split}2017.json").write_text(json.dumps(doc))
    return {a["image_id"]: (a["caption"], a["size"]) for a in anns}


def _centres(image: torch.Tensor) -> dict[str, tuple[float, int]]:
    """(3, H, W) ImageNet-normalised image -> colour -> (mean x of its pixels, pixel count)."""
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    r, g, b = image * std[:, None, None] + mean[:, None, None]  # (H, W) each, in [0, 1]
    out = {}
    for colour, mask in (("red", (r - b > 0.3) & (r - g > 0.3)), ("blue", (b - r > 0.3) & (b - g > 0.3))):
        xs = mask.nonzero()[:, 1].float()
        out[colour] = (float(xs.mean()) if len(xs) else float("nan"), int(mask.sum()))
    return out


def _datamodule(config: str | None, root) -> CaptionDataModule:
    data = {} if config is None else yaml.safe_load((CONFIGS / config).read_text())["data"]
    # object_labels: the boxes ride along untouched by the transforms (tests/captioning/test_object_tokens.py)
    data = {k: v for k, v in data.items() if k not in ("root", "generate_shapes", "num_workers", "object_labels")}
    return CaptionDataModule(**{**data, "root": str(root), "num_workers": 0})


@pytest.mark.parametrize("config", [None, "caption_shapes.yaml", "caption_coco.yaml"])
def test_default_transforms_keep_left_to_right_captions_true(config, tmp_path):
    captions = _ordered_set(tmp_path)
    dm = _datamodule(config, tmp_path)
    dm.setup("fit")
    model = {} if config is None else yaml.safe_load((CONFIGS / config).read_text())["model"]
    # the training step's per-batch rescale (model.batch_scales, model.low_res_scale), each factor and the smallest
    scales = model.get("batch_scales") or [1.0]
    factors = sorted({1.0, *scales, min(scales) * (model.get("low_res_scale") or 1.0)})
    torch.manual_seed(0)
    for _ in range(8):  # every random draw of the training transforms
        for index in range(len(dm.train_set)):
            image, drawn, image_id = dm.train_set[index]  # drawn: one caption, or data.captions_per_image of them
            expected, (h, w) = captions[image_id]
            assert all(c == expected for c in ((drawn,) if isinstance(drawn, str) else drawn))  # never rewritten
            caption = expected
            first, second = caption.split()[1], caption.split()[5]
            for factor in factors:
                scaled = rescale_batch(image[None], None, factor)[0][0]
                centres = _centres(scaled)
                square = 36 * 36 * scaled.shape[-1] * scaled.shape[-2] / (h * w)  # a square's pixels at this scale
                assert min(centres["red"][1], centres["blue"][1]) > 0.7 * square, centres  # both squares whole
                assert centres[first][0] < centres[second][0], (caption, centres)  # still in the named order


def test_mirroring_is_opt_in_and_swaps_the_position_words(tmp_path):
    _ordered_set(tmp_path)
    (tmp_path / "annotations" / "captions_train2017.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "000000000001.png", "height": 1, "width": 1}],
        "annotations": [{"id": 1, "image_id": 1, "caption": "a red square on the left"}]}))
    dm = CaptionDataModule(root=str(tmp_path), num_workers=0, hflip_p=1.0)
    dm.setup("fit")
    image, caption, _ = dm.train_set[0]
    plain = CaptionDataModule(root=str(tmp_path), num_workers=0)
    plain.setup("fit")
    torch.manual_seed(0)
    unflipped, plain_caption, _ = plain.train_set[0]
    assert plain_caption == "a red square on the left" and caption == "a red square on the right"
    torch.testing.assert_close(image, unflipped.flip(-1))
