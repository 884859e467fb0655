"""timm ``VisionTransformer`` -> :class:`vitkit.core.ViTEncoder` (architecture and weights).

Renames only ``pos_embed`` and drops the classifier (``head``, ``fc_norm``); unsupported timm features (layer
scale, qk norm, q/k/v without bias, a patch norm, no position table) raise rather than being approximated.
"""

from __future__ import annotations

from timm.layers import Mlp
from timm.models.vision_transformer import VisionTransformer
from torch import nn

_HEAD_KEYS = ("head.", "fc_norm.", "attn_pool.", "head_drop.")


def _act_name(act: nn.Module) -> str:
    if isinstance(act, nn.GELU):
        return "gelu_tanh" if act.approximate == "tanh" else "gelu"
    # timm's own activation modules (act_layer="gelu" / "gelu_tanh" strings build these)
    timm_names = {"GELU": "gelu", "GELUTanh": "gelu_tanh"}
    if type(act).__module__.startswith("timm.") and type(act).__name__ in timm_names:
        return timm_names[type(act).__name__]
    if isinstance(act, nn.ReLU):
        return "relu"
    raise NotImplementedError(f"timm MLP activation {type(act).__name__} is not supported by ViTEncoder")


def _require(cond: bool, what: str) -> None:
    if not cond:
        raise NotImplementedError(f"from_timm: {what} is not supported by ViTEncoder")


def encoder_from_timm(cls: type, model: nn.Module):
    """Build ``cls`` (ViTEncoder) with the architecture and weights of timm ``model`` (a ``VisionTransformer``),
    in ``model``'s train/eval mode, whose ``forward_features`` equals timm's."""
    if not isinstance(model, VisionTransformer):
        raise TypeError(f"from_timm expects a timm VisionTransformer, got {type(model).__name__}")
    blk = model.blocks[0]
    pe = model.patch_embed
    _require(type(blk.mlp) is Mlp and isinstance(blk.mlp.norm, nn.Identity), "a gated or normed MLP")
    _require(isinstance(blk.attn.norm, nn.Identity), "attention scale_norm")
    _require(pe.patch_size[0] == pe.patch_size[1], "a non-square patch")
    _require(isinstance(blk.norm1, nn.LayerNorm), "a non-LayerNorm norm layer")
    _require(isinstance(blk.ls1, nn.Identity), "layer scale")
    _require(isinstance(blk.attn.q_norm, nn.Identity), "qk_norm")
    _require(blk.attn.qkv.bias is not None, "q/k/v projections without bias")
    _require(isinstance(pe.norm, nn.Identity), "a patch-embedding norm")
    _require(model.pos_embed is not None, "a model without a learned position table")
    enc = cls(
        patch_size=pe.patch_size[0],
        patch_bias=pe.proj.bias is not None,
        in_chans=pe.proj.in_channels,
        img_size=tuple(pe.img_size),
        embed_dim=model.embed_dim,
        depth=len(model.blocks),
        num_heads=blk.attn.num_heads,
        mlp_dim=blk.mlp.fc1.out_features,
        pos_embed="learned",
        class_token=model.cls_token is not None,
        reg_tokens=model.num_reg_tokens,
        no_embed_class=model.no_embed_class,
        pre_norm=not isinstance(model.norm_pre, nn.Identity),
        final_norm=not isinstance(model.norm, nn.Identity),
        act=_act_name(blk.mlp.act),
        norm_eps=blk.norm1.eps,
    )
    state = {}
    for k, v in model.state_dict().items():
        if k.startswith(_HEAD_KEYS):
            continue
        state["pos.pos_embed" if k == "pos_embed" else k] = v
    enc.load_state_dict(state, strict=True)
    return enc.train(model.training)
