"""ViTEncoder.from_timm reproduces timm's VisionTransformer.forward_features exactly."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from vitkit.core import ViTEncoder

CASES = [
    # (model name, extra timm kwargs, image sizes (H, W), batch)
    ("vit_small_patch16_224", {}, [(224, 224), (160, 256)], 2),
    ("vit_tiny_patch16_224", {}, [(224, 224)], 2),
    ("vit_base_patch16_224", {}, [(224, 224)], 1),
    ("vit_small_patch16_224", {"class_token": False, "global_pool": "avg"}, [(224, 224), (160, 256)], 2),
    ("vit_small_patch16_224", {"reg_tokens": 4, "no_embed_class": True}, [(224, 224), (160, 256)], 2),
    # CLIP image towers (vit_*_clip_*) use pre_norm=True, which makes timm's patch conv bias-free.
    ("vit_tiny_patch16_224", {"depth": 2, "pre_norm": True}, [(224, 224)], 2),
    # SigLIP towers (vit_*_siglip_*) use act_layer="gelu_tanh" (timm's GELUTanh module).
    ("vit_tiny_patch16_224", {"depth": 2, "act_layer": "gelu_tanh"}, [(224, 224)], 2),
]
IDS = ["small", "tiny", "base", "small-avg", "small-reg4", "clip-prenorm", "siglip-gelu-tanh"]
FAST = {"tiny", "clip-prenorm", "siglip-gelu-tanh"}  # the fast tier's cases; the full suite runs all of them
CASES = [pytest.param(*case, id=i, marks=() if i in FAST else pytest.mark.slow)
         for case, i in zip(CASES, IDS, strict=True)]


@pytest.mark.parametrize("name,kwargs,sizes,batch", CASES)
def test_from_timm_matches_forward_features(perturb, name, kwargs, sizes, batch):
    model = perturb(timm.create_model(name, pretrained=False, dynamic_img_size=True, **kwargs).eval())
    enc = ViTEncoder.from_timm(model)
    assert not enc.training
    assert enc.num_prefix == model.num_prefix_tokens
    for H, W in sizes:
        x = torch.randn(batch, 3, H, W)
        with torch.no_grad():
            ref = model.forward_features(x)
            out = enc.forward_features(x)
        assert out.shape == ref.shape == (batch, model.num_prefix_tokens + (H // 16) * (W // 16), model.embed_dim)
        assert torch.isfinite(ref).all()
        assert (out - ref).abs().max().item() <= 1e-5, (name, kwargs, (H, W))


def test_from_timm_copies_weights_and_mode(perturb):
    model = perturb(timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2).eval())
    enc = ViTEncoder.from_timm(model)
    assert len(enc.blocks) == 2 and enc.embed_dim == 192 and enc.num_heads == 3
    torch.testing.assert_close(enc.pos.pos_embed, model.pos_embed, rtol=0, atol=0)
    torch.testing.assert_close(enc.cls_token, model.cls_token, rtol=0, atol=0)
    torch.testing.assert_close(enc.blocks[-1].mlp.fc2.weight, model.blocks[-1].mlp.fc2.weight, rtol=0, atol=0)
    assert ViTEncoder.from_timm(model.train()).training


def test_from_timm_rejects_non_vit():
    with pytest.raises(TypeError):
        ViTEncoder.from_timm(nn.Linear(4, 4))
    with pytest.raises(TypeError):
        ViTEncoder.from_timm(timm.create_model("resnet10t", pretrained=False))


@pytest.mark.parametrize("kwargs,what", [({"init_values": 1e-5}, "layer scale"), ({"qk_norm": True}, "qk_norm"),
                                         ({"qkv_bias": False}, "without bias"),
                                         ({"embed_norm_layer": "layernorm"}, "patch-embedding norm"),
                                         ({"pos_embed": "none"}, "position table"), ({"act_layer": "silu"}, "SiLU")])
def test_from_timm_refuses_what_the_encoder_does_not_implement(kwargs, what):
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, **kwargs)
    with pytest.raises(NotImplementedError, match=what):
        ViTEncoder.from_timm(model)
