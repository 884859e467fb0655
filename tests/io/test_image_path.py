"""One image path: for every odd image form, the Python API and the folder tools see the same pixels.

``vitkit.load(ckpt).predict(path)`` must equal what ``tools/detect.py`` writes for that file, box for box, and
``vitkit.load(ckpt).caption(path)`` what ``tools/caption.py`` writes. Both read files through
:func:`vitkit.data.images.load_rgb` and preprocess with their task's one preprocessing; the forms below are the
ones where a plain ``Image.open(path).convert("RGB")`` gives other pixels (or another orientation).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_convert

import vitkit
from tests.support.mixed_images import exif_rotated, noise
from tests.support.tiny_checkpoints import SENTENCES, save_captioner, save_detector, tiny_captioner
from vitkit.captioning import CaptionTokenizer
from vitkit.data.images import load_rgb

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]
# file -> the mode Pillow opens it in
ODD = {"gray16.png": "I;16", "rgba.png": "RGBA", "palette.png": "P", "cmyk.jpg": "CMYK", "rotated.jpg": "RGB",
       "bits.png": "1"}
NAIVE_DIFFERS = ("gray16.png", "rgba.png", "palette.png", "rotated.jpg")  # convert("RGB") alone gets these wrong


def _odd_folder(root: Path) -> Path:
    """The six odd forms, 40 x 56 (w x h) or so, in one folder."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 65536, (56, 40), dtype=np.uint16)).save(root / "gray16.png")
    rgba = np.concatenate([np.asarray(noise(56, 40, 1)), rng.integers(0, 256, (56, 40, 1), dtype=np.uint8)], axis=2)
    rgba[:20, :, 3] = 0  # fully transparent top rows
    Image.fromarray(rgba, "RGBA").save(root / "rgba.png")
    palette = noise(56, 40, 2).convert("P")
    palette.save(root / "palette.png", transparency=palette.getpixel((0, 0)))  # a colour the image uses
    noise(56, 40, 3).convert("CMYK").save(root / "cmyk.jpg", quality=95)
    exif_rotated(root / "rotated.jpg")  # stored 48 x 24, orientation 6: upright 24 x 48
    noise(56, 40, 4).convert("1").save(root / "bits.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return _odd_folder(tmp_path_factory.mktemp("odd") / "images")


def _tool(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "tools" / name), *args, "--device", "cpu", "--precision",
                           "fp32", "--workers", "0", "--batch-size", "1"], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_the_folder_holds_the_odd_forms(folder):
    for name, mode in ODD.items():
        with Image.open(folder / name) as im:
            assert im.mode == mode, name
            naive = np.asarray(im.convert("RGB"))
        upright = np.asarray(load_rgb(folder / name))
        differs = naive.shape != upright.shape or not np.array_equal(naive, upright)
        assert differs == (name in NAIVE_DIFFERS), name
    with Image.open(folder / "palette.png") as im:
        assert "transparency" in im.info
    assert load_rgb(folder / "rotated.jpg").size == (24, 48)


def test_predict_equals_tools_detect_box_for_box(folder, tmp_path):
    ckpt = save_detector(tmp_path / "det.ckpt")
    out = tmp_path / "dets.json"
    _tool("detect.py", str(folder), "--ckpt", str(ckpt), "--out", str(out), "--score-threshold", "0", cwd=tmp_path)
    ids = {e["file_name"]: e["id"] for e in json.loads((tmp_path / "dets.images.json").read_text())["images"]}
    results = json.loads(out.read_text())
    assert sorted(ids) == sorted(ODD)
    det = vitkit.load(ckpt)
    for name in ODD:
        expected = det.predict(str(folder / name), score_threshold=0.0)[0]
        order = torch.argsort(expected["scores"], descending=True, stable=True).tolist()
        got = [r for r in results if r["image_id"] == ids[name]]
        assert len(got) == len(order) > 0, name
        assert [r["score"] for r in got] == pytest.approx(expected["scores"][order].tolist(), abs=1e-5), name
        assert [r["category_id"] for r in got] == [expected["category_ids"][k] for k in order], name
        xywh = box_convert(expected["boxes"][order], "xyxy", "xywh")  # (K, 4) pixels
        assert torch.tensor([r["bbox"] for r in got]) == pytest.approx(xywh, abs=1e-3), name


def test_caption_equals_tools_caption(folder, tmp_path):
    tokenizer = CaptionTokenizer.train(SENTENCES, model="wordlevel")
    ckpt = save_captioner(tmp_path / "cap.ckpt", tiny_captioner(tokenizer), tokenizer)
    out = tmp_path / "captions.jsonl"
    _tool("caption.py", str(folder), "--ckpt", str(ckpt), "--out", str(out), cwd=tmp_path)
    records = {r["file"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert sorted(records) == sorted(ODD)
    pipe = vitkit.load(ckpt)
    for name in ODD:
        expected = pipe.caption(str(folder / name))[0]
        assert records[name]["caption"] == expected["caption"], name
        assert records[name]["score"] == pytest.approx(expected["score"], abs=1e-5), name
