"""A tiny random describe (detect, then caption each object) checkpoint laid out as tools/train.py writes it (for
the describe predictor, CLI and export tests), in well under a second instead of a training run.

The detector is :mod:`tests.support.tiny_checkpoints`' tiny DETR (shapes classes, preprocessing at short side 32,
long side <= 64); the text decoder a 1-layer, width-32 Captioner built without an image encoder, with a word-level
tokenizer trained on :data:`PHRASES`; the head reads 2 x 2 RoI tokens. Weights are perturbed so that boxes,
scores and captions depend on the image. The spec is made by :func:`vitkit.describe.spec.checkpoint_spec`, the
function DescribeModule uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tests.support.tiny_checkpoints import CAT_IDS, CLASS_NAMES, VAL_SIZE, detector_config, lightning_checkpoint
from vitkit.captioning import CaptionTokenizer
from vitkit.describe.model import DescribeModel
from vitkit.describe.spec import build_network, checkpoint_spec

PHRASES = ["a small red square", "a big blue circle", "a green triangle", "a large yellow star", "a tiny red circle"]


def text_config(tokenizer: CaptionTokenizer) -> dict[str, Any]:
    """The text decoder's config with the tokenizer's values, as the training CLI records it."""
    return {"class_path": "vitkit.captioning.Captioner",
            "init_args": {"encoder": None,
                          "decoder": {"class_path": "vitkit.core.TransformerDecoder",
                                      "init_args": {"dim": 32, "depth": 1, "num_heads": 2,
                                                    "return_intermediate": False}},
                          "vocab_size": tokenizer.vocab_size, "pad_id": tokenizer.pad_id, "bos_id": tokenizer.bos_id,
                          "eos_id": tokenizer.eos_id, "max_length": 8}}


def tiny_describer(seed: int = 0) -> tuple[dict[str, Any], DescribeModel, CaptionTokenizer]:
    """(model config, perturbed network in eval mode, tokenizer)."""
    tokenizer = CaptionTokenizer.train(PHRASES, vocab_size=64, model="wordlevel")
    config = {"detector": detector_config(), "text": text_config(tokenizer), "roi_size": 2}
    torch.manual_seed(seed)
    net = build_network(config).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return config, net, tokenizer


def save_describer(path: Path, seed: int = 0) -> Path:
    """Save a tiny describe checkpoint at ``path``."""
    config, net, tokenizer = tiny_describer(seed)
    hparams = {"class_names": CLASS_NAMES, "label_to_cat_id": CAT_IDS, "num_select": 100, "roi_size": 2}
    data = {"val_size": VAL_SIZE, "val_max_size": 2 * VAL_SIZE}
    spec = checkpoint_spec(config["detector"], config["text"], tokenizer.to_str(), hparams, data)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(lightning_checkpoint(spec, net, hyper_parameters=hparams, datamodule_hyper_parameters=data), path)
    return path
