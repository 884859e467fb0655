"""Tiny random detection and captioning checkpoints laid out as tools/train.py writes them (for the inference
tools' tests).

A DETR with a 1-block, width-32 ViT encoder (patch 16) and decoder, 5 queries and the shapes set's classes
(contiguous labels 0..3 -> category ids 1, 3, 7, 9); preprocessing at short side 32, long side <= 64. Weights are
perturbed so that boxes, scores and attention depend on the image.

A Captioner of the same size (one layer each side, at most 8 tokens) with a word-level tokenizer trained on
:data:`SENTENCES`, the same preprocessing; large random weights, so captions and scores depend on the image.

The inference spec is made by the functions the Lightning modules use (``checkpoint_spec`` of
:mod:`vitkit.detection.spec` and :mod:`vitkit.captioning.spec`) and stored by :func:`vitkit.utils.spec.write_spec`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitkit.captioning import Captioner, CaptionTokenizer
from vitkit.captioning.spec import checkpoint_spec as caption_spec
from vitkit.detection import DETR
from vitkit.detection.spec import checkpoint_spec as detection_spec
from vitkit.tasks import find
from vitkit.utils.config import instantiate
from vitkit.utils.spec import SPEC_KEY, InferenceSpec, write_spec

CLASS_NAMES = ["square", "circle", "triangle", "star"]
CAT_IDS = [1, 3, 7, 9]
VAL_SIZE = 32


def detector_config(**detr: Any) -> dict[str, Any]:
    """The model config of a tiny DETR; ``detr`` overrides DETR's init args."""
    return {
        "class_path": "vitkit.detection.DETR",
        "init_args": {
            "num_classes": len(CLASS_NAMES),
            "num_queries": 5,
            "encoder": {"class_path": "vitkit.core.ViTEncoder",
                        "init_args": {"patch_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2,
                                      "class_token": False, "pos_embed": "sine"}},
            "decoder": {"class_path": "vitkit.core.TransformerDecoder",
                        "init_args": {"dim": 32, "depth": 1, "num_heads": 2}},
            **detr,
        },
    }


def lightning_checkpoint(spec: InferenceSpec, model: nn.Module, **extra: Any) -> dict[str, Any]:
    """A checkpoint dict laid out as tools/train.py writes it: ``spec`` and ``model``'s weights under the Lightning
    module's prefix (``detector.``, ``captioner.``); ``extra`` adds top-level keys."""
    prefix = find(spec.task).state_prefix
    ckpt = {"state_dict": {f"{prefix}{k}": v for k, v in model.state_dict().items()}, **extra}
    write_spec(ckpt, spec)
    return ckpt


DEFORMABLE = {"sigmoid_head": True, "box_refine": True, "multiscale": True, "cross_attn": "deformable",
              "num_points": 2}


def save_detector(path: Path, seed: int = 0, **detr: Any) -> Path:
    """Build a tiny DETR (``detr`` overrides its init args), perturb its weights, save it as a checkpoint."""
    config = detector_config(**detr)
    torch.manual_seed(seed)
    model = instantiate(copy.deepcopy(config), DETR).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    hparams = {"class_names": CLASS_NAMES, "label_to_cat_id": CAT_IDS, "num_select": 100}
    data = {"val_size": VAL_SIZE, "val_max_size": 2 * VAL_SIZE}
    ckpt = lightning_checkpoint(detection_spec(config, hparams, data), model, hyper_parameters=hparams,
                                datamodule_hyper_parameters=data)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


# ----------------------------------------------------------------------------------------------- captioning
SENTENCES = ["a red square on the left", "a blue circle on the right", "two green triangles",
             "a small yellow star above a big red circle", "an empty white picture"]
CAPTIONER_CONFIG = {
    "class_path": "vitkit.captioning.Captioner",
    "init_args": {
        "encoder": {"class_path": "vitkit.core.ViTEncoder",
                    "init_args": {"patch_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2, "class_token": False}},
        "decoder": {"class_path": "vitkit.core.TransformerDecoder",
                    "init_args": {"dim": 32, "depth": 1, "num_heads": 2, "return_intermediate": False}},
        "max_length": 8,
    },
}


def tiny_captioner(tokenizer: CaptionTokenizer) -> Captioner:
    """A tiny Captioner for ``tokenizer``'s vocabulary, seeded, with large random weights."""
    config = json.loads(json.dumps(CAPTIONER_CONFIG))
    config["init_args"]["vocab_size"] = tokenizer.vocab_size
    torch.manual_seed(0)
    model = instantiate(config, Captioner).eval()
    with torch.no_grad():  # large random weights, so captions and scores depend on the image
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def save_captioner(path: Path, model: Captioner, tokenizer: CaptionTokenizer,
                   hyper_parameters: dict[str, Any] | None = None, spec_changes: dict[str, Any] | None = None,
                   **extra: Any) -> Path:
    """Save ``model`` and ``tokenizer`` as a captioning checkpoint.

    Args:
        hyper_parameters: the checkpoint's hyper-parameters (they do not enter the spec).
        spec_changes: fields set in the stored spec dict after it is written (None removes one), to make broken
            checkpoints.
        extra: more top-level keys.
    """
    config = json.loads(json.dumps(CAPTIONER_CONFIG))
    config["init_args"]["vocab_size"] = tokenizer.vocab_size
    hparams = {"lr": 1e-4} if hyper_parameters is None else hyper_parameters
    data = {"val_size": VAL_SIZE, "max_size": 2 * VAL_SIZE}
    ckpt = lightning_checkpoint(caption_spec(config, tokenizer.to_str(), data), model,
                                hyper_parameters=hparams, datamodule_hyper_parameters=data, **extra)
    for key, value in (spec_changes or {}).items():
        if value is None:
            ckpt[SPEC_KEY].pop(key, None)
        else:
            ckpt[SPEC_KEY][key] = value
    torch.save(ckpt, path)
    return path
