"""Tiny random detection checkpoints laid out as tools/train.py writes them (for the inference tools' tests).

A DETR with a 1-block, width-32 ViT encoder (patch 16) and decoder, 5 queries and the shapes set's classes
(contiguous labels 0..3 -> category ids 1, 3, 7, 9); preprocessing at short side 32, long side <= 64. Weights are
perturbed so that boxes, scores and attention depend on the image.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from vitkit.detection import DETR
from vitkit.io.load import instantiate

CLASS_NAMES = ["square", "circle", "triangle", "star"]
CAT_IDS = [1, 3, 7, 9]
VAL_SIZE = 32


def detector_config(**detr: Any) -> dict[str, Any]:
    """The ``vitkit_detector_config`` of a tiny DETR; ``detr`` overrides DETR's init args."""
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
    sigmoid = bool(detr.get("sigmoid_head", False))
    ckpt = {"vitkit_detector_config": config,
            "state_dict": {f"detector.{k}": v for k, v in model.state_dict().items()},
            "hyper_parameters": {"class_names": CLASS_NAMES, "label_to_cat_id": CAT_IDS, "num_select": 100,
                                 "loss_type": "focal" if sigmoid else "ce"},
            "datamodule_hyper_parameters": {"val_size": VAL_SIZE, "val_max_size": 2 * VAL_SIZE}}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path
