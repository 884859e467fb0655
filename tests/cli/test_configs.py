"""Every shipped config builds its model, and the model runs a forward pass (the GPU configs are never trained here)."""

from __future__ import annotations

import pytest
import torch
import yaml

from tests.support.configs import CONFIGS, build_module
from vitkit.captioning.module import CaptionModule
from vitkit.describe.module import DescribeModule
from vitkit.detection.module import DetectionModule


@pytest.mark.parametrize("config", ["detr_shapes.yaml", pytest.param("detr_coco.yaml", marks=pytest.mark.slow),
                                    pytest.param("detr_r50_coco.yaml", marks=pytest.mark.slow)])
def test_detection_configs_build_and_run(config):
    det = build_module(config, DetectionModule, {"num_classes": 80}).detector.eval()
    with torch.no_grad():
        out = det(torch.randn(1, 3, 128, 160))
    assert out["pred_boxes"].shape[-1] == 4 and out["pred_logits"].shape[-1] in (80, 81)
    assert torch.isfinite(out["pred_logits"]).all()


@pytest.mark.parametrize("config", ["caption_shapes.yaml", pytest.param("caption_coco.yaml", marks=pytest.mark.slow)])
def test_caption_configs_build_and_run(config):
    links = {"vocab_size": 50, "pad_id": 0, "bos_id": 1, "eos_id": 2, "max_length": 8}
    cap = build_module(config, CaptionModule, links).captioner.eval()
    ids, scores = cap.generate(torch.randn(1, 3, 64, 96), method="greedy")
    assert ids.shape[0] == 1 and ids[0, 0] == 1 and ids.shape[1] <= 8 and torch.isfinite(scores).all()


@pytest.mark.parametrize("config", ["describe_shapes.yaml", "describe_vg.yaml"])
def test_the_describe_configs_build_and_describe_boxes(config):
    text_links = {"vocab_size": 50, "pad_id": 0, "bos_id": 1, "eos_id": 2, "max_length": 8}
    encoder = {"pretrained": False} if config == "describe_vg.yaml" else None  # no download in tests
    module = build_module(config, DescribeModule, {"num_classes": 5}, encoder=encoder, text_links=text_links)
    assert module.head.text.encoder is None and module.hparams.roi_size == 7
    model = module.describer().eval()
    boxes = [torch.tensor([[0.5, 0.5, 0.3, 0.4]])]
    with torch.no_grad():
        out = model.describe(torch.randn(1, 3, 128, 160), boxes=boxes, method="greedy")
    ids = out[0]["ids"]
    assert ids.shape[0] == 1 and ids[0, 0] == 1 and ids.shape[1] <= 8


def test_the_describe_recipe_is_the_shipped_detection_recipe():
    """describe_shapes.yaml trains detr_shapes.yaml's detector with its recipe and data, plus the text decoder, for
    fewer epochs (sized to 15 minutes on 2 cores)."""
    describe = yaml.safe_load((CONFIGS / "describe_shapes.yaml").read_text())
    detr = yaml.safe_load((CONFIGS / "detr_shapes.yaml").read_text())
    sized = ("max_epochs", "check_val_every_n_epoch")
    assert describe["trainer"]["max_epochs"] < detr["trainer"]["max_epochs"]
    assert {k: v for k, v in describe["trainer"].items() if k not in sized} == \
        {k: v for k, v in detr["trainer"].items() if k not in sized}
    assert describe["seed_everything"] == detr["seed_everything"]
    head = {"text": describe["model"].pop("text"),
            **{k: describe["model"].pop(k) for k in ("roi_size", "caption_weight", "describe_eval_max_detections")}}
    assert describe["model"] == detr["model"] and head["roi_size"] == 7
    extra = {k: describe["data"].pop(k) for k in ("hflip_p", "tokenizer_model", "vocab_size", "max_length")}
    assert describe["data"] == detr["data"] and extra["tokenizer_model"] == "wordlevel"


def test_the_visual_genome_recipe_is_sized_like_grits_vit_b_dense_captioning():
    """ViT-B/16 at 1024 px, 8 GPUs x 8 images = GRiT's 64 per step, lr 8e-5, 1000 warmup steps, 180k steps, on the
    layout vitkit convert-vg writes."""
    vg = yaml.safe_load((CONFIGS / "describe_vg.yaml").read_text())
    trainer, model, data = vg["trainer"], vg["model"], vg["data"]
    assert trainer["devices"] * data["batch_size"] == 64 and trainer["max_steps"] == 180_000
    assert (model["lr"], model["warmup_steps"], model["schedule"]) == (8.0e-5, 1000, "cosine")
    encoder = model["detector"]["init_args"]["encoder"]["init_args"]
    assert encoder["model_name"].startswith("vit_base_patch16_")
    assert data["train_max_size"] == data["val_max_size"] == 1024 and data["root"] == "data/vg"
    assert data["hflip_p"] == 0.0 and "Time: an estimate" in (CONFIGS / "describe_vg.yaml").read_text()

