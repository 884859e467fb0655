"""Official DETR-R50 weights into vitkit: the facebookresearch/detr release (torch.hub ``.pth``, weights under
``"model"``) and Hugging Face ``DetrForObjectDetection`` checkpoints (transformers 4 and 5 key names).

Separate q/k/v projections are concatenated into vitkit's fused ``qkv`` ([q; k; v], the ``in_proj_weight`` layout).
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor

from vitkit.detection.model import DETR
from vitkit.detection.spec import FIELDS, NAME
from vitkit.utils.checkpoints import CheckpointError, safe_load_checkpoint
from vitkit.utils.config import instantiate
from vitkit.utils.spec import SPEC_KEY, InferenceSpec

# (pattern, replacement) applied in order to Hugging Face keys after HF_ALIASES; first match wins.
_HF_RULES = [
    (r"^model\.backbone\.model\.(.+)$", r"encoder.patch_embed.body.\1"),
    (r"^model\.input_projection\.(weight|bias)$", r"encoder.patch_embed.input_proj.\1"),
    (r"^model\.encoder\.layers\.(\d+)\.self_attn\.o_proj\.(weight|bias)$", r"encoder.blocks.\1.attn.proj.\2"),
    (r"^model\.encoder\.layers\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)$", r"encoder.blocks.\1.mlp.\2.\3"),
    (r"^model\.encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)$", r"encoder.blocks.\1.norm1.\2"),
    (r"^model\.encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)$", r"encoder.blocks.\1.norm2.\2"),
    (r"^model\.decoder\.layers\.(\d+)\.self_attn\.o_proj\.(weight|bias)$", r"decoder.layers.\1.attn.proj.\2"),
    (r"^model\.decoder\.layers\.(\d+)\.encoder_attn\.o_proj\.(weight|bias)$", r"decoder.layers.\1.cross_attn.proj.\2"),
    (r"^model\.decoder\.layers\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)$", r"decoder.layers.\1.mlp.\2.\3"),
    (r"^model\.decoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)$", r"decoder.layers.\1.norm1.\2"),
    (r"^model\.decoder\.layers\.(\d+)\.encoder_attn_layer_norm\.(weight|bias)$", r"decoder.layers.\1.norm2.\2"),
    (r"^model\.decoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)$", r"decoder.layers.\1.norm3.\2"),
    (r"^model\.decoder\.layernorm\.(weight|bias)$", r"decoder.norm.\1"),
    (r"^model\.query_position_embeddings\.weight$", r"query_embed.weight"),
    (r"^class_labels_classifier\.(weight|bias)$", r"class_embed.\1"),
    (r"^bbox_predictor\.layers\.(\d)\.(weight|bias)$", r"bbox_embed.layers.\1.\2"),
]
# transformers 4 (the hub files) -> transformers 5 spelling, before _HF_RULES.
_HF_ALIASES = [
    (r"^model\.backbone\.conv_encoder\.model\.", "model.backbone.model."),
    (r"\.out_proj\.", ".o_proj."),
    (r"^(model\.(?:en|de)coder\.layers\.\d+)\.(fc1|fc2)\.", r"\1.mlp.\2."),
]
_HF_QKV = re.compile(
    r"^model\.(encoder|decoder)\.layers\.(\d+)\.(self_attn|encoder_attn)\.(q|k|v)_proj\.(weight|bias)$")

_OFFICIAL_RULES = [
    (r"^backbone\.0\.body\.(.+)$", r"encoder.patch_embed.body.\1"),
    (r"^input_proj\.(weight|bias)$", r"encoder.patch_embed.input_proj.\1"),
    (r"^transformer\.encoder\.layers\.(\d+)\.self_attn\.in_proj_(weight|bias)$", r"encoder.blocks.\1.attn.qkv.\2"),
    (r"^transformer\.encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)$", r"encoder.blocks.\1.attn.proj.\2"),
    (r"^transformer\.encoder\.layers\.(\d+)\.linear1\.(weight|bias)$", r"encoder.blocks.\1.mlp.fc1.\2"),
    (r"^transformer\.encoder\.layers\.(\d+)\.linear2\.(weight|bias)$", r"encoder.blocks.\1.mlp.fc2.\2"),
    (r"^transformer\.encoder\.layers\.(\d+)\.norm(1|2)\.(weight|bias)$", r"encoder.blocks.\1.norm\2.\3"),
    (r"^transformer\.decoder\.layers\.(\d+)\.self_attn\.in_proj_(weight|bias)$", r"decoder.layers.\1.attn.qkv.\2"),
    (r"^transformer\.decoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)$", r"decoder.layers.\1.attn.proj.\2"),
    (r"^transformer\.decoder\.layers\.(\d+)\.multihead_attn\.in_proj_(weight|bias)$",
     r"decoder.layers.\1.cross_attn.qkv.\2"),
    (r"^transformer\.decoder\.layers\.(\d+)\.multihead_attn\.out_proj\.(weight|bias)$",
     r"decoder.layers.\1.cross_attn.proj.\2"),
    (r"^transformer\.decoder\.layers\.(\d+)\.linear1\.(weight|bias)$", r"decoder.layers.\1.mlp.fc1.\2"),
    (r"^transformer\.decoder\.layers\.(\d+)\.linear2\.(weight|bias)$", r"decoder.layers.\1.mlp.fc2.\2"),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm(1|2|3)\.(weight|bias)$", r"decoder.layers.\1.norm\2.\3"),
    (r"^transformer\.decoder\.norm\.(weight|bias)$", r"decoder.norm.\1"),
    (r"^(query_embed\.weight|class_embed\.(?:weight|bias)|bbox_embed\.layers\.\d\.(?:weight|bias))$", r"\1"),
]


def _rename(key: str, rules: list[tuple[str, str]]) -> str | None:
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return None


def _skippable(key: str) -> bool:
    """Entries with no vitkit counterpart that carry no weights: BatchNorm step counters."""
    return key.endswith("num_batches_tracked")


def detr_format(state_dict: dict[str, Tensor]) -> str:
    """"official" (facebookresearch/detr), "hf" (Hugging Face) or "vitkit", from the key names."""
    keys = list(state_dict)
    if any(k.startswith("transformer.") or k.startswith("backbone.0.body.") for k in keys):
        return "official"
    if any(k.startswith("model.") or k.startswith("class_labels_classifier.") for k in keys):
        return "hf"
    if any(k.startswith("encoder.") for k in keys):
        return "vitkit"
    raise ValueError(f"not a DETR state dict of a known layout (first keys: {keys[:5]})")


def official_to_vitkit(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """facebookresearch/detr ``model`` weights -> vitkit DETR keys; raises ValueError listing unmapped keys."""
    out, unknown = {}, []
    for key, value in state_dict.items():
        new = _rename(key, _OFFICIAL_RULES)
        if new is not None:
            out[new] = value
        elif not _skippable(key):
            unknown.append(key)
    if unknown:
        raise ValueError(f"{len(unknown)} facebookresearch/detr keys have no vitkit counterpart: {unknown[:8]} "
                         "(only the detection model, not DETR's panoptic head, converts)")
    return out


def hf_to_vitkit(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face ``DetrForObjectDetection`` weights (transformers 4 or 5 names) -> vitkit DETR keys; raises
    ValueError on unmapped keys or an attention layer missing one of q/k/v."""
    out, unknown, qkv = {}, [], {}
    for key, value in state_dict.items():
        for pattern, repl in _HF_ALIASES:
            key = re.sub(pattern, repl, key)
        m = _HF_QKV.match(key)
        if m:
            part, layer, attn, which, kind = m.groups()
            block = "blocks" if part == "encoder" else "layers"
            name = "attn" if attn == "self_attn" else "cross_attn"
            qkv.setdefault(f"{part}.{block}.{layer}.{name}.qkv.{kind}", {})[which] = value
            continue
        new = _rename(key, _HF_RULES)
        if new is not None:
            out[new] = value
        elif not (_skippable(key) or key.startswith("model.backbone.position_embedding")):
            unknown.append(key)
    for name, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"Hugging Face DETR weights: {name} has only {sorted(parts)} of q/k/v projections")
        out[name] = torch.cat((parts["q"], parts["k"], parts["v"]), dim=0)  # (3D, D) or (3D,)
    if unknown:
        raise ValueError(f"{len(unknown)} Hugging Face DETR keys have no vitkit counterpart: {unknown[:8]}")
    return out


def read_detr_weights(path: str | Path) -> tuple[dict[str, Tensor], dict]:
    """Read an official DETR checkpoint safely and convert it to vitkit keys.

    Args:
        path: a facebookresearch/detr ``.pth``; a Hugging Face ``model.safetensors`` / ``pytorch_model.bin``; or a
            Hugging Face model folder holding one of those and ``config.json``.

    Returns:
        (vitkit state dict, info) with info ``format`` ("official" | "hf"), ``num_classes`` (C, the class head
        has C + 1 rows) and, for Hugging Face files with a config.json beside them, ``id2label`` {int: str}.

    Raises:
        FileNotFoundError: nothing at ``path``, or a folder without weights.
        CheckpointError: (a ValueError) the file needs arbitrary pickled objects or is not a readable torch /
            safetensors file.
        ValueError: not a DETR checkpoint of a known layout.
    """
    path = Path(path)
    if path.is_dir():
        found = [path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()]
        if not found:
            raise FileNotFoundError(f"{path}: no model.safetensors or pytorch_model.bin in this folder")
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"DETR weights not found: {path}")
    if path.suffix == ".safetensors":
        try:
            raw = load_file(str(path))
        except Exception as err:
            raise CheckpointError(f"{path}: not a readable safetensors file ({type(err).__name__}: "
                                  f"{str(err)[:200]})") from None
    else:  # the release's training checkpoints also hold their argparse.Namespace of settings
        with torch.serialization.safe_globals([argparse.Namespace]):
            raw = safe_load_checkpoint(path)  # a CheckpointError (refused, or unreadable) naming the file
        if isinstance(raw, dict) and isinstance(raw.get("model"), dict):
            raw = raw["model"]
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{path}: holds no state dict")
    fmt = detr_format(raw)
    if fmt == "vitkit":
        raise ValueError(f"{path}: already in vitkit's layout; load it with vitkit.load or load_state_dict")
    state = official_to_vitkit(raw) if fmt == "official" else hf_to_vitkit(raw)
    info: dict = {"format": fmt, "num_classes": int(state["class_embed.weight"].shape[0]) - 1}
    config = path.parent / "config.json"
    if fmt == "hf" and config.is_file():
        id2label = json.loads(config.read_text()).get("id2label") or {}
        info["id2label"] = {int(k): str(v) for k, v in id2label.items()}
    return state, info


def detr_r50_config(num_classes: int = 91) -> dict:
    """The config (``class_path`` / ``init_args``) of the official DETR-R50 architecture; ``num_classes`` is C
    (the head has C + 1 outputs; 91 for COCO category ids)."""
    backbone = {"class_path": "vitkit.layers.BackbonePatchEmbed",
                "init_args": {"model_name": "resnet50", "embed_dim": 256, "pretrained": False, "frozen_bn": True,
                              "freeze_at": 2}}
    encoder = {"class_path": "vitkit.core.ViTEncoder",
               "init_args": {"patch_embed": backbone, "embed_dim": 256, "depth": 6, "num_heads": 8, "mlp_dim": 2048,
                             "dropout": 0.1, "act": "relu", "norm_eps": 1e-5, "pos_embed": "sine", "pos_mode": "qk",
                             "class_token": False, "norm_first": False, "final_norm": False}}
    decoder = {"class_path": "vitkit.core.TransformerDecoder",
               "init_args": {"dim": 256, "depth": 6, "num_heads": 8, "mlp_dim": 2048, "dropout": 0.1, "act": "relu",
                             "norm_first": False}}
    return {"class_path": "vitkit.detection.DETR",
            "init_args": {"num_classes": num_classes, "num_queries": 100, "encoder": encoder, "decoder": decoder}}


def detr_r50(num_classes: int = 91) -> torch.nn.Module:
    """The DETR-R50 architecture of the official checkpoints (:func:`detr_r50_config`), untrained."""
    return instantiate(detr_r50_config(num_classes), DETR)


def load_detr_weights(path: str | Path, size: int = 800, max_size: int = 1333) -> tuple[InferenceSpec, dict]:
    """An official DETR checkpoint as the inference spec and weights for
    :func:`vitkit.io.load.build_predictor`.

    Labels are the checkpoint's class indices (``label_to_cat_id`` is the identity); class names come from a
    Hugging Face config.json when there is one.

    Args:
        path: as :func:`read_detr_weights`.
        size, max_size: the preprocessing (short side, long side cap in px).

    Returns:
        (spec, vitkit state dict) of a DETR-R50 (:func:`detr_r50_config`).
    """
    state, info = read_detr_weights(path)
    C = info["num_classes"]
    id2label = info.get("id2label") or {}
    names = [id2label.get(i, f"class_{i}") for i in range(C)] if id2label else None
    spec = InferenceSpec(task=NAME, model_config=detr_r50_config(C), size=size, max_size=max_size,
                         class_names=names, label_to_cat_id=list(range(C))).bind(FIELDS)
    return spec, state


_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what a Hugging Face model folder holds


def _is_detr_layout(keys: Any) -> bool:
    """Whether state-dict keys are of the facebookresearch/detr or the Hugging Face DETR layout."""
    try:
        return detr_format(dict.fromkeys(keys)) in ("official", "hf")
    except ValueError:
        return False


class DetrImporter:
    """Official DETR weights as a foreign format :func:`vitkit.load` reads (:class:`vitkit.training.task.Importer`)."""

    description = ("official DETR weights (a facebookresearch/detr .pth, Hugging Face DETR safetensors / bin, or a "
                   "folder holding them with config.json)")

    def accepts(self, source: Path | Mapping[str, Any]) -> bool:
        """A checkpoint dict ``{"model": state dict}`` or a state dict of DETR keys (not a Lightning checkpoint);
        a ``.safetensors`` file of DETR keys; a folder holding ``model.safetensors`` or ``pytorch_model.bin``
        whose config.json, if any, names no model type other than ``detr``."""
        if isinstance(source, Mapping):
            state = source.get("model") if isinstance(source.get("model"), Mapping) else source
            return bool(state) and all(isinstance(k, str) for k in state) and "state_dict" not in source \
                and SPEC_KEY not in source and _is_detr_layout(state)
        path = Path(source)
        if path.is_dir():
            config = path / "config.json"
            try:
                model_type = json.loads(config.read_text()).get("model_type", "detr") if config.is_file() else "detr"
            except (OSError, ValueError, AttributeError):
                return False
            return model_type == "detr" and any((path / name).is_file() for name in _WEIGHT_FILES)
        if path.suffix == ".safetensors" and path.is_file():
            try:
                with safe_open(str(path), framework="pt") as f:
                    return _is_detr_layout(f.keys())
            except Exception:  # not a readable safetensors file: not ours
                return False
        return False

    def read(self, path: Path) -> tuple[InferenceSpec, dict[str, Tensor]]:
        """(spec, vitkit state dict) of accepted weights, at DETR's evaluation sizes (:func:`load_detr_weights`)."""
        return load_detr_weights(path)


IMPORTER = DetrImporter()
"""The importer the detection task lists (:data:`vitkit.detection.task.TASK`)."""


def select_classes(state: dict[str, Tensor], class_ids: list[int]) -> dict[str, Tensor]:
    """Keep the class-head rows of ``class_ids`` (in that order) and the last, no-object row; raises ValueError
    on an id the head does not have."""
    weight = state["class_embed.weight"]  # (C + 1, D)
    if max(class_ids, default=-1) >= weight.shape[0] - 1 or min(class_ids, default=0) < 0:
        raise ValueError(f"category ids {class_ids} do not fit a class head of {weight.shape[0] - 1} classes")
    rows = torch.tensor([*class_ids, weight.shape[0] - 1])
    return {**state, "class_embed.weight": weight[rows], "class_embed.bias": state["class_embed.bias"][rows]}
