"""Grounded image features: start a captioner's image encoder from a detector trained on the same images.

A DETR detector's encoder has learned to separate, localise and classify the objects that captions name; a
captioner trained from scratch on a small set often has not (its captions get the template right and the colours
and classes wrong). ``CaptionModule(from_detector=CKPT)`` copies the detector's ``encoder.*`` weights into the
captioner's encoder before training starts. The two encoders must have the same architecture: set the captioner's
``encoder`` to the detector's encoder config (``configs/caption_shapes_grounded.yaml`` does so for
``configs/detr_shapes.yaml``); a mismatch is an error that names the differing weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from vitkit.utils.checkpoints import safe_load_checkpoint

_PREFIXES = ("detector.encoder.", "encoder.")  # a Lightning checkpoint's, an exported safetensors file's


def detector_encoder_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ``encoder.*`` weights of a detector checkpoint (Lightning ``.ckpt`` or vitkit's safetensors export),
    keyed as in :class:`vitkit.core.ViTEncoder`.

    Raises:
        FileNotFoundError: no file; CheckpointError: an unsafe or unreadable ``.ckpt``; ValueError: no encoder weights.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise FileNotFoundError(f"model.from_detector: no file at {path}")
        state = load_file(path)
    else:
        ckpt = safe_load_checkpoint(path)
        state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else {}
    for prefix in _PREFIXES:
        weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if weights:
            return weights
    raise ValueError(f"model.from_detector: {path} holds no detector encoder weights (no key starts with "
                     f"{' or '.join(_PREFIXES)}); give a detection checkpoint written by `vitkit train detr_*`")


def load_detector_encoder(encoder: nn.Module, path: str | os.PathLike) -> int:
    """Copy a detector checkpoint's encoder weights into ``encoder`` (strict: same keys, same shapes).

    Returns:
        The number of tensors copied.

    Raises:
        ValueError: the architectures differ; the message lists missing, unexpected and differently shaped keys.
    """
    weights = detector_encoder_weights(path)
    own = encoder.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    shapes = [f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}" for k in sorted(set(own) & set(weights))
              if weights[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{name}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}" for name, keys in
                 (("missing", missing), ("unexpected", unexpected), ("shape (detector vs captioner)", shapes)) if keys]
        raise ValueError(f"model.from_detector: the detector's encoder in {path} differs from the captioner's "
                         f"({'; '.join(parts)}). Set model.captioner.init_args.encoder to the detector's encoder "
                         "config (its runs/<config>/version_N/config.yaml, model.detector.init_args.encoder)")
    encoder.load_state_dict(weights)
    return len(weights)
