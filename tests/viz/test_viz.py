"""vitkit.viz: attention weights read through hooks (checked against the modules' outputs), and the pictures.

Each picture is rendered into a temporary folder and checked to be a PNG of a sensible size that is not blank
(pixel variance, many colours).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

import vitkit
from tests.support.tiny_checkpoints import DEFORMABLE, detector_config, lightning_checkpoint, save_detector
from vitkit import viz
from vitkit.captioning import Captioner, CaptionTokenizer
from vitkit.captioning import attention_maps as caption_pictures
from vitkit.captioning.predictor import CaptionPipeline
from vitkit.captioning.spec import checkpoint_spec as caption_spec
from vitkit.detection import attention_maps as detection_pictures
from vitkit.detection.spec import checkpoint_spec as detection_spec
from vitkit.layers import KVCache, MultiheadAttention
from vitkit.utils.config import instantiate

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]


def _check_png(path: Path, min_w: int = 300, min_h: int = 200) -> None:
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.width >= min_w and im.height >= min_h, im.size
        pixels = np.asarray(im.convert("RGB")).astype(np.float32)  # (H, W, 3)
    assert pixels.std() > 20, "blank picture"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100, "too few colours for an image with a heatmap"


def _scene(w: int = 96, h: int = 72) -> Image.Image:
    """A grey picture with a red square, a blue disc and a green triangle."""
    img = Image.new("RGB", (w, h), (200, 200, 200))
    draw = ImageDraw.Draw(img)
    draw.rectangle((8, 10, 34, 36), fill=(220, 30, 30))
    draw.ellipse((50, 8, 82, 40), fill=(30, 60, 220))
    draw.polygon([(30, 66), (52, 42), (74, 66)], fill=(30, 170, 60))
    return img


# ----------------------------------------------------------------------------------------------- recording
def _manual_output(m: MultiheadAttention, weights: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """proj(weights @ v) with v projected by the module: what the module returns if ``weights`` are its own."""
    D, B = m.dim, value.shape[0]
    v = F.linear(value, m.qkv.weight[2 * D:], m.qkv.bias[2 * D:]).view(B, -1, m.num_heads, m.head_dim).transpose(1, 2)
    out = (weights @ v).transpose(1, 2).reshape(B, weights.shape[2], D)  # (B, Tq, D)
    return m.proj(out)


def test_recorded_weights_reproduce_the_attention_output():
    m = MultiheadAttention(16, num_heads=4).eval()
    q, mem = torch.randn(2, 3, 16), torch.randn(2, 7, 16)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 5:] = True
    with viz.AttentionRecorder(m) as rec, torch.no_grad():
        out = m(q, mem + 1, mem, key_padding_mask=pad)  # keys carry positions, values do not
    (w,) = rec.weights
    assert w.shape == (2, 4, 3, 7)
    assert torch.allclose(w.sum(-1), torch.ones(2, 4, 3), atol=1e-6) and (w[1, :, :, 5:] == 0).all()
    assert torch.allclose(_manual_output(m, w, mem), out, atol=1e-5)

    # KV-cached calls: a static cross-attention cache (keys from the cache on the second call) and causal
    # self-attention token by token (the last row of each step = that row of the full causal pass)
    cross = KVCache(static=True)
    with viz.AttentionRecorder(m) as rec, torch.no_grad():
        first = m(q, mem + 1, mem, cache=cross)
        second = m(q[:, :1], cache=cross)
    assert torch.allclose(_manual_output(m, rec.weights[0], mem), first, atol=1e-5)
    assert torch.allclose(rec.weights[1], rec.weights[0][:, :, :1], atol=1e-6) and second.shape == (2, 1, 16)
    x, cache = torch.randn(1, 4, 16), KVCache()
    with viz.AttentionRecorder(m) as rec, torch.no_grad():
        m(x, is_causal=True)
        for t in range(4):
            m(x[:, t: t + 1], is_causal=True, cache=cache)
    full = rec.weights[0]  # (1, 4, 4, 4)
    assert torch.allclose(full.triu(1), torch.zeros_like(full))
    for t in range(4):
        assert torch.allclose(rec.weights[1 + t][0, :, 0], full[0, :, t, : t + 1], atol=1e-6)


def test_token_grids_map_onto_the_image():
    # one-hot attention on token (row 1, column 2) of a 2 x 3 grid at stride 16 over a 32 x 48 input
    w = torch.zeros(1, 6)
    w[0, 1 * 3 + 2] = 1.0
    heat = viz.levels_to_image(w, [(2, 3)], [16.0], (32, 48), (64, 96))[0]  # display at 2x
    y, x = np.unravel_index(int(heat.argmax()), heat.shape)
    assert 32 <= y < 64 and 64 <= x < 96
    assert float(heat[:16, :48].max()) == 0.0  # far tokens get nothing
    # uniform attention over two levels (stride 16 and 8) is a uniform density over the image
    w = torch.full((1, 6 + 24), 1 / 30)
    heat = viz.levels_to_image(w, [(2, 3), (4, 6)], [16.0, 8.0], (32, 48), (20, 30))[0]
    assert float(heat.std() / heat.mean()) < 1e-5


# ----------------------------------------------------------------------------------------------- pictures
MULTI_LEVEL_GLOBAL = {"multiscale": True, "coarse_level": True}


@pytest.mark.parametrize("variant", ["global", pytest.param("global_levels_cls", marks=pytest.mark.slow),
                                     pytest.param("deformable", marks=pytest.mark.slow)])
def test_detection_attention_picture(variant, tmp_path):
    if variant == "deformable":
        ckpt = save_detector(tmp_path / "det.ckpt", **DEFORMABLE)
    elif variant == "global":
        ckpt = save_detector(tmp_path / "det.ckpt")
    else:  # a class token in the memory and three grids
        config = detector_config(**MULTI_LEVEL_GLOBAL)
        config["init_args"]["encoder"]["init_args"]["class_token"] = True
        torch.manual_seed(0)
        model = instantiate(config, vitkit.detection.DETR)
        ckpt = tmp_path / "det.ckpt"
        torch.save(lightning_checkpoint(detection_spec(config, {}, {}), model), ckpt)
    det = vitkit.load(ckpt)
    att = detection_pictures.detection_attention(det, _scene(), score_threshold=0.0)
    assert att.kind == ("deformable" if variant == "deformable" else "global")
    assert len(att.boxes) == len(att.queries) == 5 and att.image.shape == (360, 480, 3)
    assert list(att.scores) == sorted(att.scores, reverse=True)
    if variant == "deformable":
        heads, levels, points = 2, 2, 2
        assert all(p.shape == (heads * levels * points, 2) for p in att.points)
        assert all(abs(float(w.sum()) - 1.0) < 1e-5 for w in att.point_weights)
    else:
        assert att.maps.shape == (5, 360, 480) and np.isfinite(att.maps).all() and (att.maps >= 0).all()
        assert (att.maps.std(axis=(1, 2)) > 0).all()
    path = detection_pictures.plot_detection_attention(att, tmp_path / "pictures" / f"detection_{variant}.png")
    _check_png(path, 800, 400)


SENTENCES = ["a red square on the left", "a blue circle on the right", "two green triangles"]
CAPTIONER = {"encoder": {"class_path": "vitkit.core.ViTEncoder",
                         "init_args": {"patch_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2,
                                       "class_token": True}},
             "decoder": {"class_path": "vitkit.core.TransformerDecoder",
                         "init_args": {"dim": 32, "depth": 1, "num_heads": 2, "return_intermediate": False}},
             "max_length": 8}


@pytest.fixture(scope="module")
def captioner() -> tuple[dict, Captioner, CaptionTokenizer]:
    """A tiny random captioner (a class token in its memory) with large weights, its config and tokenizer."""
    tok = CaptionTokenizer.train(SENTENCES, model="wordlevel")
    config = {"class_path": "vitkit.captioning.Captioner", "init_args": {**CAPTIONER, "vocab_size": tok.vocab_size}}
    torch.manual_seed(0)
    model = instantiate(json.loads(json.dumps(config)), Captioner).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return config, model, tok


def test_caption_attention_picture(captioner, tmp_path):
    _, model, tok = captioner
    pipe = CaptionPipeline(model, tok, size=48, max_size=96)
    image = _scene()
    att = caption_pictures.caption_attention(pipe, image, method="greedy")
    expected = pipe.caption(image, method="greedy")[0]["caption"]
    assert att.caption == expected
    assert att.tokens[-1] == "[EOS]" or len(att.tokens) == 7  # EOS, or stopped at max_length (8 with BOS)
    assert " ".join(t for t in att.tokens if t != "[EOS]") == expected
    assert att.maps.shape == (len(att.tokens), 360, 480) and np.isfinite(att.maps).all()
    path = caption_pictures.plot_caption_attention(att, tmp_path / "pictures" / "caption.png")
    _check_png(path, 800, 300)


@pytest.mark.slow  # a CLI run end to end: the full suite runs it
def test_caption_cli_attention(captioner, tmp_path, capsys):
    config, model, tok = captioner
    ckpt = tmp_path / "cap.ckpt"
    torch.save(lightning_checkpoint(caption_spec(config, tok.to_str(), {"val_size": 48}), model), ckpt)
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    _scene().save(images / "scene.JPG")
    _scene(40, 60).convert("P").save(images / "sub" / "small.gif")
    (images / "broken.png").write_bytes(b"not a png")
    spec = importlib.util.spec_from_file_location("caption_tool", REPO / "tools" / "caption.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    att = tmp_path / "att"
    status = module.main([str(images), "--ckpt", str(ckpt), "--out", str(tmp_path / "c.jsonl"), "--beam", "2",
                          "--workers", "0", "--attention", str(att)])
    captured = capsys.readouterr()
    assert status == 3 and captured.err.count("failed: broken.png") == 1  # reported once, not twice
    assert captured.out.strip().splitlines()[-1].startswith("captioned 2, failed 1")
    pictures = sorted(p.relative_to(att).as_posix() for p in att.rglob("*") if p.is_file())
    assert pictures == ["scene.JPG.png", "sub/small.gif.png"]
    for picture in pictures:
        _check_png(att / picture, 500, 200)


def _coco_pair(tmp_path: Path) -> tuple[Path, Path]:
    """GT with 3 categories over 10 images and scored detections: jittered boxes, some misses, some false ones."""
    rng = np.random.default_rng(0)
    images, anns, results = [], [], []
    for i in range(1, 11):
        images.append({"id": i, "width": 320, "height": 240, "file_name": f"{i}.jpg"})
        for _ in range(4):
            w, h = rng.uniform(20, 120, 2)
            x, y = rng.uniform(0, 320 - w), rng.uniform(0, 240 - h)
            cat = int(rng.choice([1, 2, 5]))
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
            if rng.random() < 0.85:
                jittered = np.array([x, y, w, h]) + rng.normal(0, 3 + 5 * (cat == 5), 4)
                results.append({"image_id": i, "category_id": cat, "bbox": [float(v) for v in jittered],
                                "score": float(rng.uniform(0.3, 1))})
            if rng.random() < 0.4:
                results.append({"image_id": i, "category_id": cat, "bbox": [float(v) for v in rng.uniform(0, 150, 4)],
                                "score": float(rng.uniform(0, 0.7))})
    cats = [{"id": 1, "name": "square"}, {"id": 2, "name": "circle"}, {"id": 5, "name": "star"}]
    gt, res = tmp_path / "gt.json", tmp_path / "res.json"
    gt.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    res.write_text(json.dumps(results))
    return gt, res


@pytest.mark.slow  # a CLI run end to end: the full suite runs it
def test_pr_curves_picture_and_cli(tmp_path):
    gt, res = _coco_pair(tmp_path)
    precision, meta = viz.coco_precision(gt, res)
    assert precision.shape == (10, 101, 3, 4, 3) and meta["cat_names"] == ["square", "circle", "star"]
    assert ((precision[:, :, :, 0, -1] >= 0) & (precision[:, :, :, 0, -1] <= 1)).all()
    faster, _ = viz.coco_precision(gt, res, backend="faster")
    assert np.allclose(faster, precision, atol=1e-12)
    path = viz.plot_pr_curves(precision, tmp_path / "pictures" / "pr.png", meta["rec_thrs"], meta["iou_thrs"],
                              meta["cat_names"])
    _check_png(path, 800, 300)

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "cli" / "pr.png"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "plot_pr.py"), "--annotations", str(gt),
                           "--results", str(res), "--out", str(out)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "3 classes" in proc.stdout
    _check_png(out, 800, 300)
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "plot_pr.py"), "--annotations", str(gt),
                           "--results", str(tmp_path / "missing.json")], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 2 and "not found" in proc.stderr and "Traceback" not in proc.stderr
