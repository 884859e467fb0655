"""``vitkit.load`` of a describe checkpoint: the Describer's outputs at the user boundary, given
boxes, the safetensors round trip and the ONNX export of its detector."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_convert

import vitkit
from tests.support.cli import run_main
from tests.support.tiny_checkpoints import CAT_IDS, CLASS_NAMES
from tests.support.tiny_describe import save_describer
from vitkit.cli import export as export_command
from vitkit.describe.predictor import Describer
from vitkit.io.export import (
    export_checkpoint,
    export_safetensors,
    load_safetensors,
    onnx_session,
    read_checkpoint_config,
    run_onnx,
)
from vitkit.io.load import WeightsMismatchError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_describer(tmp_path_factory.mktemp("describe") / "last.ckpt")


@pytest.fixture(scope="module")
def describer(ckpt) -> Describer:
    return vitkit.load(ckpt)


def _image(h: int, w: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_load_describes_paths_pil_images_and_tensors(describer, tmp_path):
    assert isinstance(describer, Describer) and describer.class_names == CLASS_NAMES
    _image(30, 50, 1).save(tmp_path / "a.png")
    images = [tmp_path / "a.png", _image(70, 40, 2), torch.randint(0, 256, (3, 24, 24), dtype=torch.uint8)]
    out = describer.describe(images, threshold=0.0, max_detections=3, num_beams=1)
    assert len(out) == 3
    for r, (h, w) in zip(out, [(30, 50), (70, 40), (24, 24)], strict=True):
        n = len(r["boxes"])
        assert n == 3 and r["boxes"].shape == (n, 4) and r["boxes"].dtype == torch.float32
        assert (r["boxes"][:, :2] >= 0).all() and (r["boxes"][:, 2] <= w).all() and (r["boxes"][:, 3] <= h).all()
        assert (r["boxes"][:, 2:] >= r["boxes"][:, :2]).all()
        assert r["scores"].shape == (n,) and (r["scores"].diff() <= 0).all()
        assert r["label_names"] == [CLASS_NAMES[j] for j in r["labels"].tolist()]
        assert r["category_ids"] == [CAT_IDS[j] for j in r["labels"].tolist()]
        assert len(r["captions"]) == n and all(isinstance(c, str) for c in r["captions"])
        assert set(r) == {"boxes", "scores", "labels", "label_names", "category_ids", "captions"}
    # One image alone: the same as in the batch (padding does not change it), and a threshold keeps fewer.
    alone = describer.describe(images[1], threshold=0.0, max_detections=3, num_beams=1)[0]
    torch.testing.assert_close(alone["boxes"], out[1]["boxes"], atol=1e-4, rtol=0)
    assert alone["captions"] == out[1]["captions"]
    high = describer.describe(images[1], threshold=float(out[1]["scores"][0]) - 1e-6)[0]
    assert len(high["boxes"]) == 1


def test_detections_are_the_detection_predictors(describer):
    """Detected boxes, scores and labels are what the Detector inside returns (same preprocessing and pixels)."""
    image = _image(40, 64, 3)
    got = describer.describe(image, threshold=0.0, max_detections=5)[0]
    want = describer.detector.predict(image, score_threshold=0.0)[0]
    torch.testing.assert_close(got["boxes"], want["boxes"][:5], atol=1e-4, rtol=0)
    torch.testing.assert_close(got["scores"], want["scores"][:5])
    assert got["labels"].tolist() == want["labels"][:5].tolist()


def test_given_boxes_come_back_as_given_with_a_caption_each(describer):
    images = [_image(40, 60, 4), _image(32, 32, 5), _image(50, 30, 6)]
    boxes = [[[1.5, 2.0, 30.25, 20.0], [0, 0, 60, 40], [10, 10, 10, 30]], [], torch.tensor([[5.0, 6.0, 25.0, 45.0]])]
    out = describer.describe(images, boxes=boxes, num_beams=1, batch_size=2)
    for r, given in zip(out, boxes, strict=True):
        given = torch.as_tensor(given, dtype=torch.float32).reshape(-1, 4)
        assert torch.equal(r["boxes"], given)
        assert len(r["captions"]) == len(given) == len(r["scores"]) == len(r["labels"])
        assert all(isinstance(c, str) for c in r["captions"])
    # The captions are the region captioner's for the same boxes in its own (normalised cxcywh) form.
    batch, mask, _ = describer.preprocess(images[:1])
    norm = box_convert(torch.as_tensor(boxes[0]) / torch.tensor([60.0, 40, 60, 40]), "xyxy", "cxcywh")
    ids = describer.model.describe(batch, mask, boxes=[norm], method="greedy")[0]["ids"]
    assert describer.tokenizer.decode_batch(ids) == out[0]["captions"]
    # One image may take its boxes directly.
    single = describer.describe(images[2], boxes=[[5.0, 6.0, 25.0, 45.0]], num_beams=1)[0]
    assert single["captions"] == out[2]["captions"]


@pytest.mark.parametrize("boxes, match", [([[[0, 0, 5, 5]]], r"one list of boxes per image \(2 images\), got 1"),
                                          ([[[0, 0, 5]], []], r"boxes\[0\]: expected \(n, 4\)"),
                                          ([[[5, 0, 1, 5]], []], r"boxes\[0\]: .* x1 >= x0")])
def test_bad_boxes_are_refused_by_name(describer, boxes, match):
    with pytest.raises(ValueError, match=match):
        describer.describe([_image(20, 20, 7), _image(20, 20, 8)], boxes=boxes)


def test_safetensors_export_rebuilds_the_describer(describer, ckpt, tmp_path):
    export_checkpoint(ckpt, "safetensors", tmp_path / "m.safetensors")
    again = load_safetensors(tmp_path / "m.safetensors")
    assert isinstance(again, Describer) and again.tokenizer.to_str() == describer.tokenizer.to_str()
    image = _image(36, 48, 9)
    a, b = (m.describe(image, threshold=0.0, max_detections=2, num_beams=1)[0] for m in (describer, again))
    torch.testing.assert_close(a["boxes"], b["boxes"])
    assert a["captions"] == b["captions"]
    # And from a loaded Describer directly: the spec records its settings.
    task, config = read_checkpoint_config(ckpt)
    report = export_safetensors(describer, config, tmp_path / "n.safetensors")
    assert (task, report.task) == ("describe", "describe") and isinstance(load_safetensors(report.path), Describer)


def test_onnx_export_is_the_detector_and_matches_it(describer, ckpt, tmp_path, capfd):
    """The graph is the detector alone (said with the export); onnxruntime gives the torch detector's detections."""
    report = export_checkpoint(ckpt, "onnx", tmp_path / "det.onnx", dynamic=True)
    assert report.task == "describe" and report.outputs == ["boxes", "scores", "labels"]
    assert any("region caption head is not exported to ONNX" in n for n in report.notes)
    assert all(d[k] < 1e-3 for d in report.checks.values() for k in ("scores", "boxes", "labels"))
    image = _image(40, 56, 10)
    batch, mask, sizes = describer.preprocess([image])
    boxes, scores, labels = run_onnx(onnx_session(tmp_path / "det.onnx"), (batch, mask, sizes))
    want = describer.detector.predict(image, score_threshold=0.0)[0]
    np.testing.assert_allclose(scores[0], want["scores"].numpy(), atol=1e-4)
    np.testing.assert_allclose(boxes[0], want["boxes"].numpy(), atol=1e-2)
    assert labels[0].tolist() == want["labels"].tolist()
    # Through the CLI: the default name says what it is, and the note is printed.
    result = run_main(export_command.main, [str(ckpt), "--no-check"], capfd)
    assert result.returncode == 0, result.stderr
    assert "detector of a region captioner" in result.stdout and "not exported to ONNX" in result.stdout
    assert ckpt.with_suffix(".detector.onnx").is_file()


def test_only_the_describe_models_weights_are_read(ckpt, tmp_path):
    """Other modules of the training module (its criterion's buffers, say) are left out; a missing region head
    weight is an error naming it."""
    data = torch.load(ckpt, weights_only=True)
    data["state_dict"]["criterion.empty_weight"] = torch.zeros(2)
    torch.save(data, tmp_path / "extra.ckpt")
    assert isinstance(vitkit.load(tmp_path / "extra.ckpt"), Describer)
    del data["state_dict"]["head.region_memory.box_embed.0.weight"]
    torch.save(data, tmp_path / "missing.ckpt")
    with pytest.raises(WeightsMismatchError, match=r"missing: head\.region_memory\.box_embed\.0\.weight"):
        vitkit.load(tmp_path / "missing.ckpt")


def test_bf16_runs_the_detector_in_bf16_and_the_caption_head_in_fp32(ckpt, describer):
    """bf16 applies to the detector (roi_align has no bf16 CPU kernel): outputs stay float32 and close to fp32."""
    fast = vitkit.load(ckpt, precision="bf16")
    assert next(fast.model.detector.parameters()).dtype == torch.bfloat16
    assert next(fast.model.head.parameters()).dtype == torch.float32
    image = _image(40, 60, 11)
    a, b = (m.describe(image, threshold=0.0, max_detections=2, num_beams=1)[0] for m in (describer, fast))
    assert b["boxes"].dtype == b["scores"].dtype == torch.float32 and len(b["captions"]) == 2
    torch.testing.assert_close(a["boxes"], b["boxes"], atol=1.0, rtol=0)
