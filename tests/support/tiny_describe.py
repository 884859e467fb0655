"""A tiny random region-caption (``describe``) checkpoint laid out as tools/train.py writes it (for the describe
predictor, CLI and export tests), in well under a second instead of a training run.

The detector is :mod:`tests.support.tiny_checkpoints`' tiny DETR (shapes classes, preprocessing at short side 32,
long side <= 64); the text decoder a 1-layer, width-32 Captioner built without an image encoder, with a word-level
tokenizer trained on :data:`PHRASES`; the head uses RoI conditioning (2 x 2). Weights are perturbed so that boxes,
scores and captions depend on the image. The spec is made by :func:`vitkit.describe.export.checkpoint_spec`, the
function DenseModule uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tests.support.tiny_checkpoints import CAT_IDS, CLASS_NAMES, VAL_SIZE, detector_config, lightning_checkpoint
from vitkit.captioning import CaptionTokenizer
from vitkit.describe.export import build_network, checkpoint_spec
from vitkit.describe.model import RegionCaptioner

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


IMAGE_DECODER = {"class_path": "vitkit.core.TransformerDecoder",
                 "init_args": {"dim": 24, "depth": 1, "num_heads": 2, "return_intermediate": False}}


def tiny_describer(seed: int = 0, image_head: bool = False) -> tuple[dict[str, Any], RegionCaptioner,
                                                                      CaptionTokenizer]:
    """(model config, perturbed network in eval mode, tokenizer); ``image_head``: with an image caption head."""
    tokenizer = CaptionTokenizer.train(PHRASES, vocab_size=64, model="wordlevel")
    config = {"detector": detector_config(), "text": text_config(tokenizer), "conditioning": "roi", "roi_size": 2}
    if image_head:
        config.update(image_decoder=IMAGE_DECODER, num_objects=3)
    torch.manual_seed(seed)
    net = build_network(config).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return config, net, tokenizer


def save_describer(path: Path, seed: int = 0, image_head: bool = False) -> Path:
    """Save a tiny describe checkpoint at ``path`` (``image_head``: with an image caption head)."""
    config, net, tokenizer = tiny_describer(seed, image_head)
    hparams = {"class_names": CLASS_NAMES, "label_to_cat_id": CAT_IDS, "num_select": 100, "conditioning": "roi",
               "roi_size": 2, "num_objects": 3}
    data = {"val_size": VAL_SIZE, "val_max_size": 2 * VAL_SIZE}
    spec = checkpoint_spec(config["detector"], config["text"], tokenizer.to_str(), hparams, data,
                           config.get("image_decoder"))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(lightning_checkpoint(spec, net, hyper_parameters=hparams, datamodule_hyper_parameters=data), path)
    return path
