"""Grounded features: a captioner's encoder starts from a detector checkpoint's encoder."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tests.support.configs import build_module
from vitkit.captioning.grounding import detector_encoder_weights, load_detector_encoder
from vitkit.captioning.module import CaptionModule
from vitkit.detection.module import DetectionModule
from vitkit.train.guards import ConfigError

ENCODER = {"stem_channels": [8, 16], "stem_depths": [0, 0], "embed_dim": 32, "depth": 1, "num_heads": 2}
CAPTION_LINKS = {"vocab_size": 12, "pad_id": 0, "bos_id": 1, "eos_id": 2, "max_length": 8}


def _detector_checkpoint(path, encoder=ENCODER):
    torch.manual_seed(1)
    det = build_module("detr_shapes.yaml", DetectionModule, {"num_classes": 4}, encoder,
                       {"dim": 32, "depth": 1, "num_heads": 2})
    torch.save({"state_dict": det.state_dict(), "epoch": 3}, path)
    return det


def test_the_captioner_encoder_takes_the_detector_encoder(tmp_path):
    det = _detector_checkpoint(tmp_path / "det.ckpt")
    torch.manual_seed(2)
    cap = build_module("caption_shapes.yaml", CaptionModule, CAPTION_LINKS, ENCODER,
                       {"dim": 48, "depth": 1, "num_heads": 2})
    before = {k: v.clone() for k, v in cap.captioner.state_dict().items()}
    copied = load_detector_encoder(cap.captioner.encoder, tmp_path / "det.ckpt")
    assert copied == len(det.detector.encoder.state_dict())
    for k, v in det.detector.encoder.state_dict().items():
        torch.testing.assert_close(cap.captioner.encoder.state_dict()[k], v, rtol=0, atol=0)
    changed = {k for k, v in cap.captioner.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("encoder.") for k in changed)  # the text side is untouched
    # a weights-only safetensors export (keys without the Lightning prefix) gives the same weights
    save_file({k: v.contiguous() for k, v in det.detector.state_dict().items()}, tmp_path / "det.safetensors")
    a, b = detector_encoder_weights(tmp_path / "det.ckpt"), detector_encoder_weights(tmp_path / "det.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_different_encoder_is_an_error_naming_the_weights(tmp_path):
    _detector_checkpoint(tmp_path / "det.ckpt", {**ENCODER, "embed_dim": 64})
    cap = build_module("caption_shapes.yaml", CaptionModule, CAPTION_LINKS, ENCODER,
                       {"dim": 32, "depth": 1, "num_heads": 2})
    with pytest.raises(ValueError, match=r"shape \(detector vs captioner\).*\(64.*vs \(32.*model.captioner"):
        load_detector_encoder(cap.captioner.encoder, tmp_path / "det.ckpt")
    torch.save({"state_dict": {"captioner.lm_head.weight": torch.zeros(2)}}, tmp_path / "cap.ckpt")
    with pytest.raises(ValueError, match="no detector encoder weights"):
        load_detector_encoder(cap.captioner.encoder, tmp_path / "cap.ckpt")


def test_module_applies_it_at_fit_setup_as_a_config_error(tmp_path):
    _detector_checkpoint(tmp_path / "det.ckpt", {**ENCODER, "depth": 2})
    module = build_module("caption_shapes.yaml", CaptionModule, CAPTION_LINKS, ENCODER,
                          {"dim": 32, "depth": 1, "num_heads": 2})
    module.hparams.from_detector = str(tmp_path / "det.ckpt")
    with pytest.raises(ConfigError, match=r"unexpected: blocks\.1"):
        module.setup("fit")
