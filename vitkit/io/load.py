"""``vitkit.load``: rebuild a ready model from a training checkpoint, loading it safely."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vitkit.utils.checkpoints import CheckpointError, check_stored_config, safe_load_checkpoint

__all__ = ["CheckpointError", "instantiate", "load", "safe_load_checkpoint"]


def instantiate(config: dict, base: type) -> nn.Module:
    """Build an object from a ``{"class_path": ..., "init_args": {...}}`` dict (nested ones too)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--obj", type=base)
    cfg = parser.parse_object({"obj": config})
    return parser.instantiate_classes(cfg).obj


def load(path: str | Path, map_location: str | torch.device = "cpu", precision: str = "fp32"):
    """Load a checkpoint and return the ready model it holds.

    - a detection checkpoint (``vitkit_detector_config``): a :class:`vitkit.detection.predictor.Detector`;
    - a captioning checkpoint (``vitkit_captioner_config``): a :class:`vitkit.captioning.predictor.CaptionPipeline`;
    - a ``.safetensors`` file written by ``tools/export.py --format safetensors``: the same;
    - official DETR weights (a facebookresearch/detr ``.pth``, or Hugging Face DETR safetensors/bin or a folder
      with config.json): a DETR-R50
      :class:`~vitkit.detection.predictor.Detector` (:mod:`vitkit.detection.official_weights`).

    The checkpoint is read with ``torch.load(weights_only=True)``: a file carrying pickled code is refused. Its stored
    model config may only name classes of vitkit, torch.nn and timm, and is built with ``pretrained`` off
    (:func:`vitkit.utils.checkpoints.check_stored_config`).

    Args:
        path: a Lightning ``.ckpt`` from ``runs/<config>/checkpoints/``.
        map_location: device to load the weights onto.
        precision: ``"fp32"`` (the weights as trained), ``"bf16"`` (frozen BatchNorm folded, bf16 weights: ~2-2.7x
            faster on a CPU with AVX-512 bf16 / AMX, AP within 0.5 points) or ``"auto"`` (bf16 where the device
            runs it fast). See :mod:`vitkit.kernels.precision`.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: (a ValueError) the file is not a safe weights-only checkpoint, or not readable, or its
            stored config names a class outside vitkit, torch.nn and timm.
        ValueError: not one of vitkit's checkpoints (the message says what was expected), or its config, weights
            and tokenizer do not fit together.
    """
    from vitkit.kernels.precision import resolve_precision

    precision = resolve_precision(precision, map_location)
    model = _load(Path(path), map_location)
    return model if precision == "fp32" else model.set_precision(precision)


def _load(path: Path, map_location: str | torch.device):
    """:func:`load` in fp32."""
    if path.is_dir() or path.suffix == ".safetensors":
        return _load_weights_file(path, map_location)
    ckpt = safe_load_checkpoint(path, map_location)
    if isinstance(ckpt, dict) and _is_official_detr(ckpt):
        from vitkit.detection.official_weights import load_detr_weights

        return load_detr_weights(path).to(map_location)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: holds a {type(ckpt).__name__}, not a checkpoint dict; expected a Lightning .ckpt "
                         "written by tools/train.py")
    if ckpt.get("vitkit_captioner_config") is not None:
        return _load_captioner(path, ckpt, map_location)
    config = ckpt.get("vitkit_detector_config")
    if config is None:
        raise ValueError(f"{path}: neither 'vitkit_detector_config' (detection) nor 'vitkit_captioner_config' "
                         "(captioning) is in the checkpoint; expected a Lightning .ckpt written by tools/train.py "
                         f"(top-level keys found: {sorted(map(str, ckpt))[:12]})")
    from vitkit.detection import PostProcess
    from vitkit.detection.model import DETR
    from vitkit.detection.predictor import Detector

    model = instantiate(check_stored_config(config, f"{path}: 'vitkit_detector_config'"), DETR)
    state = {k[len("detector."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("detector.")}
    model.load_state_dict(state)
    hp = ckpt.get("hyper_parameters", {})
    data_hp = ckpt.get("datamodule_hyper_parameters", {})
    post = PostProcess(use_focal=hp.get("loss_type", "ce") != "ce", num_select=hp.get("num_select", 100))
    det = Detector(model, post, class_names=hp.get("class_names"), label_to_cat_id=hp.get("label_to_cat_id"),
                   size=data_hp.get("val_size", 800), max_size=data_hp.get("val_max_size", 1333))
    return det.to(map_location).eval()


def _is_official_detr(ckpt: dict) -> bool:
    """A facebookresearch/detr ``{"model": state_dict}`` or a Hugging Face DETR state dict."""
    from vitkit.detection.official_weights import detr_format

    state = ckpt.get("model") if isinstance(ckpt.get("model"), dict) else ckpt
    if not state or not all(isinstance(k, str) for k in state) or "state_dict" in ckpt:
        return False
    try:
        return detr_format(state) in ("official", "hf")
    except ValueError:
        return False


def _load_weights_file(path: Path, map_location: str | torch.device):
    """A folder or ``.safetensors``: vitkit's export (with its metadata), else Hugging Face DETR weights."""
    from vitkit.detection.official_weights import load_detr_weights

    if path.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception as err:
            raise ValueError(f"{path}: not a readable safetensors file ({type(err).__name__}: {err})") from err
        if "vitkit_task" in meta:
            from vitkit.io.export import load_safetensors

            return load_safetensors(path, map_location)
    elif not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return load_detr_weights(path).to(map_location)


_CAPTION_MODULE_GENERATION = {"val_length_penalty": "length_penalty", "val_max_length": "max_length"}


def _load_captioner(path: Path, ckpt: dict, map_location: str | torch.device):
    """The :class:`~vitkit.captioning.predictor.CaptionPipeline` of a captioning checkpoint (see :func:`load`).

    Preprocessing comes from ``datamodule_hyper_parameters``: short side ``val_size`` (default 224), long side cap
    ``val_max_size`` or ``max_size`` (default 2 x ``val_size``). Decoding defaults from ``hyper_parameters``, when
    present: ``val_length_penalty`` and ``val_max_length`` (CaptionModule's validation settings), overridden by keys
    named like ``Captioner.generate``'s options, overridden by a ``generation`` dict of them.
    """
    from vitkit.captioning.model import Captioner
    from vitkit.captioning.predictor import GENERATION_KEYS, CaptionPipeline
    from vitkit.captioning.tokenizer import CaptionTokenizer

    config = check_stored_config(ckpt["vitkit_captioner_config"], f"{path}: 'vitkit_captioner_config'")
    try:
        model = instantiate(config, Captioner)
    except Exception as err:
        raise ValueError(f"{path}: cannot build the captioner from 'vitkit_captioner_config' "
                         f"({type(err).__name__}: {err})") from err
    state_dict = ckpt.get("state_dict")
    if not isinstance(state_dict, dict):
        raise ValueError(f"{path}: no 'state_dict' with the captioner's weights")
    state = {k[len("captioner."):]: v for k, v in state_dict.items() if k.startswith("captioner.")}
    if not state:
        raise ValueError(f"{path}: 'state_dict' has no 'captioner.*' weights")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{path}: the weights do not fit the captioner built from the checkpoint's config: "
                         f"{err}") from err
    tok_json = ckpt.get("vitkit_tokenizer")
    if not isinstance(tok_json, str):
        raise ValueError(f"{path}: no 'vitkit_tokenizer' (the tokenizer JSON) in the captioning checkpoint")
    try:
        tokenizer = CaptionTokenizer.from_str(tok_json)
    except Exception as err:
        raise ValueError(f"{path}: the stored tokenizer cannot be read ({type(err).__name__}: {err})") from err
    data_hp = ckpt.get("datamodule_hyper_parameters") or {}
    size = int(data_hp.get("val_size") or 224)
    max_size = data_hp.get("val_max_size") or data_hp.get("max_size") or 2 * size
    hp = ckpt.get("hyper_parameters") or {}
    nested = hp.get("generation")
    # CaptionModule's validation decoding settings, except val_beams: validation decodes greedily for speed,
    # inference keeps beam search unless told otherwise
    gen = {target: hp[source] for source, target in _CAPTION_MODULE_GENERATION.items() if hp.get(source) is not None}
    gen.update({k: v for k, v in hp.items() if v is not None})
    if isinstance(nested, dict):
        gen.update(nested)
    generation = {k: v for k, v in gen.items() if k in GENERATION_KEYS and isinstance(v, GENERATION_KEYS[k])
                  and not isinstance(v, bool)}
    try:
        pipe = CaptionPipeline(model, tokenizer, size=size, max_size=int(max_size), generation=generation)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    return pipe.to(map_location).eval()
