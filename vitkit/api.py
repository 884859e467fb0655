"""``vitkit.load``: rebuild a ready model from a training checkpoint, loading it safely."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def instantiate(config: dict, base: type) -> nn.Module:
    """Build an object from a ``{"class_path": ..., "init_args": {...}}`` dict (nested ones too)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--obj", type=base)
    cfg = parser.parse_object({"obj": config})
    return parser.instantiate_classes(cfg).obj


def load(path: str | Path, map_location: str | torch.device = "cpu"):
    """Load a checkpoint written by ``tools/train.py`` and return a ready :class:`vitkit.inference.Detector`.

    The checkpoint is read with ``torch.load(weights_only=True)``: a file carrying pickled code is refused.

    Args:
        path: a Lightning ``.ckpt`` from ``runs/<config>/checkpoints/``.
        map_location: device to load the weights onto.
    """
    from vitkit.detection import PostProcess
    from vitkit.inference import Detector
    from vitkit.models.detr import DETR

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # unpickling refused or not a torch file
        raise ValueError(f"{path}: cannot be loaded safely as weights ({type(err).__name__}: {err}). vitkit only "
                         "loads checkpoints with torch.load(weights_only=True); a file needing arbitrary "
                         "pickled objects is refused.") from err
    config = ckpt.get("vitkit_detector_config")
    if config is None:
        raise ValueError(f"{path}: no 'vitkit_detector_config' in the checkpoint; was it written by tools/train.py?")
    model = instantiate(config, DETR)
    state = {k[len("detector."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("detector.")}
    model.load_state_dict(state)
    hp = ckpt.get("hyper_parameters", {})
    data_hp = ckpt.get("datamodule_hyper_parameters", {})
    post = PostProcess(use_focal=hp.get("loss_type", "ce") != "ce", num_select=hp.get("num_select", 100))
    det = Detector(model, post, class_names=hp.get("class_names"), label_to_cat_id=hp.get("label_to_cat_id"),
                   size=data_hp.get("val_size", 800), max_size=data_hp.get("val_max_size", 1333))
    return det.to(map_location).eval()
