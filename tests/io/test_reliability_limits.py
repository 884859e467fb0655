"""Image-size limits (issue 7, item 8): a 6000 x 4000, a 1 x 1, a 40 x 900 (and a 900 x 40, and a 1 x 3000) image
pass through detection (``vitkit.load(ckpt).predict``) and captioning (``vitkit.load(ckpt).caption``): resized, not
crashed; outputs have the right shapes and boxes lie inside the original image.

Both checkpoints hold tiny random-weight models, laid out as tools/train.py writes them (see test_caption_cli.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vitkit
from tests.support.tiny_checkpoints import lightning_checkpoint
from vitkit.captioning import Captioner, CaptionTokenizer
from vitkit.detection import DETR
from vitkit.utils.config import instantiate
from vitkit.utils.spec import InferenceSpec

pytestmark = pytest.mark.usefixtures("one_thread")

VAL_SIZE, VAL_MAX_SIZE = 64, 128  # the checkpoints' preprocessing: short side 64, long side <= 128
# (width, height) of each test image
SIZES = {"huge.jpg": (6000, 4000), "one_pixel.png": (1, 1), "thin_tall.png": (40, 900), "thin_wide.png": (900, 40),
         "line.png": (3000, 1)}
# (h, w) after preprocessing: short side 64 unless the long side would pass 128; never below 1 px
RESIZED = {"huge.jpg": (64, 96), "one_pixel.png": (64, 64), "thin_tall.png": (128, 5), "thin_wide.png": (5, 128),
           "line.png": (1, 128)}
ENCODER = {"class_path": "vitkit.core.ViTEncoder",
           "init_args": {"patch_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2, "class_token": False}}
DETECTOR = {"class_path": "vitkit.detection.DETR",
            "init_args": {"encoder": ENCODER, "num_classes": 3, "num_queries": 6,
                          "decoder": {"class_path": "vitkit.core.TransformerDecoder",
                                      "init_args": {"dim": 32, "depth": 1, "num_heads": 2}}}}
CAPTIONER = {"class_path": "vitkit.captioning.Captioner",
             "init_args": {"encoder": ENCODER, "max_length": 8,
                           "decoder": {"class_path": "vitkit.core.TransformerDecoder",
                                       "init_args": {"dim": 32, "depth": 1, "num_heads": 2,
                                                     "return_intermediate": False}}}}
SENTENCES = ["a red square on the left", "a blue circle on the right", "two green triangles"]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("limits")
    out = {}
    for name, (w, h) in SIZES.items():
        if name == "huge.jpg":  # a smooth 24-megapixel photo-like JPEG (fast to write and decode)
            ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :] * np.linspace(0.2, 1, h, dtype=np.float32)[:, None]
            pixels = np.stack([ramp, ramp[::-1], np.full_like(ramp, 90)], axis=-1).astype(np.uint8)  # (h, w, 3)
        else:
            pixels = np.random.default_rng(w * h).integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name, quality=85)
        out[name] = folder / name
    return out


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    model = instantiate(json.loads(json.dumps(DETECTOR)), DETR)
    spec = InferenceSpec(task="detection", model_config=DETECTOR, size=VAL_SIZE, max_size=VAL_MAX_SIZE,
                         class_names=["a", "b", "c"], label_to_cat_id=[1, 4, 6], num_select=6)
    ckpt = lightning_checkpoint(spec, model)
    path = tmp_path_factory.mktemp("det") / "last.ckpt"
    torch.save(ckpt, path)
    return vitkit.load(path)


@pytest.fixture(scope="module")
def captioner(tmp_path_factory: pytest.TempPathFactory):
    tokenizer = CaptionTokenizer.train(SENTENCES, model="wordlevel")
    config = json.loads(json.dumps(CAPTIONER))
    config["init_args"]["vocab_size"] = tokenizer.vocab_size
    torch.manual_seed(0)
    model = instantiate(config, Captioner)
    spec = InferenceSpec(task="captioning", model_config=config, size=VAL_SIZE, max_size=VAL_MAX_SIZE,
                         tokenizer=tokenizer.to_str())
    ckpt = lightning_checkpoint(spec, model)
    path = tmp_path_factory.mktemp("cap") / "last.ckpt"
    torch.save(ckpt, path)
    return vitkit.load(path)


def test_detection_preprocess_resizes_huge_tiny_and_thin_images(detector, images: dict[str, Path]) -> None:
    names = list(SIZES)
    batch, mask, sizes = detector.preprocess([str(images[n]) for n in names])
    assert sizes.tolist() == [[SIZES[n][1], SIZES[n][0]] for n in names]  # original (h, w)
    assert batch.shape[:2] == (len(names), 3) and batch.shape[-2:] == mask.shape[-2:] == (128, 128)
    for i, name in enumerate(names):
        h, w = RESIZED[name]
        assert not mask[i, :h, :w].any() and int((~mask[i]).sum()) == h * w


@pytest.mark.parametrize("name", list(SIZES))
def test_detection_of_extreme_size_image_gives_boxes_inside_the_original_image(detector, images, name: str) -> None:
    (pred,) = detector.predict([str(images[name])], score_threshold=0.0)
    w, h = SIZES[name]
    k = 6  # num_select
    assert pred["boxes"].shape == (k, 4) and pred["scores"].shape == (k,) and pred["labels"].shape == (k,)
    assert len(pred["label_names"]) == len(pred["category_ids"]) == k
    assert set(pred["category_ids"]) <= {1, 4, 6}
    boxes = pred["boxes"]
    assert torch.isfinite(boxes).all() and torch.isfinite(pred["scores"]).all()
    assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= w).all()
    assert (boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= h).all()
    assert (boxes[:, 2:] >= boxes[:, :2]).all()


def test_detection_batch_of_mixed_extreme_sizes_matches_single_images(detector, images) -> None:
    names = list(SIZES)
    batched = detector.predict([str(images[n]) for n in names], score_threshold=0.0, batch_size=len(names))
    assert len(batched) == len(names)
    for name, pred in zip(names, batched, strict=True):
        (alone,) = detector.predict([str(images[name])], score_threshold=0.0)
        torch.testing.assert_close(pred["boxes"], alone["boxes"], atol=1e-3, rtol=1e-4)


def test_captioning_preprocess_resizes_huge_tiny_and_thin_images(captioner, images) -> None:
    names = list(SIZES)
    batch, mask = captioner.preprocess([images[n] for n in names])
    assert batch.shape == (len(names), 3, 128, 128) and mask.shape == (len(names), 128, 128)
    for i, name in enumerate(names):
        h, w = RESIZED[name]
        assert not mask[i, :h, :w].any() and int((~mask[i]).sum()) == h * w


def test_captioning_of_extreme_size_images_gives_one_caption_each(captioner, images) -> None:
    names = list(SIZES)
    out = captioner.caption([str(images[n]) for n in names], batch_size=2)
    assert len(out) == len(names)
    vocabulary = {w for s in SENTENCES for w in s.split()}
    for item in out:
        assert set(item) == {"caption", "score"} and isinstance(item["caption"], str)
        assert set(item["caption"].split()) <= vocabulary and np.isfinite(item["score"])
