"""EncoderBlock / DecoderBlock: parity with timm and torch layers, positions on q/k only, drop path."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import Block
from torch import nn

from vitkit.layers import DecoderBlock, EncoderBlock

D, H, FF = 32, 4, 48


def copy_torch_layer(ours: nn.Module, ref: nn.Module) -> None:
    """Copy an nn.TransformerEncoderLayer / nn.TransformerDecoderLayer's weights into a vitkit block."""
    pairs = [("self_attn", "attn"), ("multihead_attn", "cross_attn")]
    with torch.no_grad():
        for src, dst in pairs:
            if hasattr(ref, src):
                a, b = getattr(ref, src), getattr(ours, dst)
                b.qkv.weight.copy_(a.in_proj_weight)
                b.qkv.bias.copy_(a.in_proj_bias)
                b.proj.load_state_dict(a.out_proj.state_dict())
        ours.mlp.fc1.load_state_dict(ref.linear1.state_dict())
        ours.mlp.fc2.load_state_dict(ref.linear2.state_dict())
        for n in ("norm1", "norm2", "norm3"):
            if hasattr(ref, n):
                getattr(ours, n).load_state_dict(getattr(ref, n).state_dict())


def test_encoder_block_pre_norm_matches_timm(perturb):
    ref = perturb(Block(D, H, mlp_ratio=1.5, qkv_bias=True).eval())
    ours = EncoderBlock(D, H, mlp_ratio=1.5, norm_first=True).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 10, D)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


def test_encoder_block_post_norm_matches_torch(perturb):
    ref = perturb(nn.TransformerEncoderLayer(D, H, FF, dropout=0.0, activation="relu", batch_first=True,
                                             norm_first=False)).eval()
    ours = EncoderBlock(D, H, mlp_dim=FF, act="relu", norm_first=False, norm_eps=1e-5).eval()
    copy_torch_layer(ours, ref)
    x = torch.randn(2, 10, D)
    kpm = torch.zeros(2, 10, dtype=torch.bool)
    kpm[1, 6:] = True
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
        out, expected = ours(x, key_padding_mask=kpm), ref(x, src_key_padding_mask=kpm)
    torch.testing.assert_close(out[~kpm], expected[~kpm], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_block_matches_torch(perturb, norm_first):
    ref = perturb(nn.TransformerDecoderLayer(D, H, FF, dropout=0.0, activation="relu", batch_first=True,
                                             norm_first=norm_first)).eval()
    ours = DecoderBlock(D, H, mlp_dim=FF, act="relu", norm_first=norm_first, norm_eps=1e-5).eval()
    copy_torch_layer(ours, ref)
    tgt, mem = torch.randn(2, 5, D), torch.randn(2, 9, D)
    mkpm = torch.zeros(2, 9, dtype=torch.bool)
    mkpm[0, 4:] = True
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    with torch.no_grad():
        torch.testing.assert_close(ours(tgt, mem, memory_key_padding_mask=mkpm),
                                   ref(tgt, mem, memory_key_padding_mask=mkpm), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(tgt, mem, self_attn_mask=causal), ref(tgt, mem, tgt_mask=causal),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(tgt, mem, is_causal=True), ref(tgt, mem, tgt_mask=causal),
                                   atol=1e-5, rtol=1e-5)


def detr_decoder_layer(ref: nn.TransformerDecoderLayer, tgt, memory, query_pos, pos, norm_first: bool):
    """DETR's TransformerDecoderLayer.forward_post / forward_pre, written over torch's submodules."""
    ff = lambda t: ref.linear2(torch.relu(ref.linear1(t)))  # noqa: E731
    if not norm_first:
        q = k = tgt + query_pos
        tgt = ref.norm1(tgt + ref.self_attn(q, k, value=tgt)[0])
        tgt = ref.norm2(tgt + ref.multihead_attn(tgt + query_pos, memory + pos, value=memory)[0])
        return ref.norm3(tgt + ff(tgt))
    t2 = ref.norm1(tgt)
    q = k = t2 + query_pos
    tgt = tgt + ref.self_attn(q, k, value=t2)[0]
    t2 = ref.norm2(tgt)
    tgt = tgt + ref.multihead_attn(t2 + query_pos, memory + pos, value=memory)[0]
    return tgt + ff(ref.norm3(tgt))


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_block_positions_on_qk_only(perturb, norm_first):
    ref = perturb(nn.TransformerDecoderLayer(D, H, FF, dropout=0.0, activation="relu", batch_first=True,
                                             norm_first=norm_first)).eval()
    ours = DecoderBlock(D, H, mlp_dim=FF, act="relu", norm_first=norm_first, norm_eps=1e-5).eval()
    copy_torch_layer(ours, ref)
    tgt, mem = torch.randn(2, 5, D), torch.randn(2, 9, D)
    qpos, mpos = torch.randn(1, 5, D), torch.randn(2, 9, D)
    with torch.no_grad():
        out = ours(tgt, mem, query_pos=qpos, memory_pos=mpos)
        expected = detr_decoder_layer(ref, tgt, mem, qpos, mpos, norm_first)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, ours(tgt, mem), atol=1e-3)


def test_encoder_block_pos_on_qk_only(perturb):
    ref = perturb(nn.TransformerEncoderLayer(D, H, FF, dropout=0.0, activation="relu", batch_first=True)).eval()
    ours = EncoderBlock(D, H, mlp_dim=FF, act="relu", norm_first=False, norm_eps=1e-5).eval()
    copy_torch_layer(ours, ref)
    x, pos = torch.randn(2, 6, D), torch.randn(2, 6, D)
    with torch.no_grad():  # DETR's TransformerEncoderLayer.forward_post
        q = k = x + pos
        h = ref.norm1(x + ref.self_attn(q, k, value=x)[0])
        expected = ref.norm2(h + ref.linear2(torch.relu(ref.linear1(h))))
        torch.testing.assert_close(ours(x, pos), expected, atol=1e-5, rtol=1e-5)


def test_drop_path_stochastic_in_train_only():
    blk = EncoderBlock(D, H, drop_path=0.5)
    plain = EncoderBlock(D, H)
    plain.load_state_dict(blk.state_dict())
    x = torch.randn(8, 4, D)
    assert not torch.allclose(blk.train()(x), blk(x))
    with torch.no_grad():
        torch.testing.assert_close(blk.eval()(x), blk(x), rtol=0, atol=0)
        torch.testing.assert_close(blk(x), plain.eval()(x), rtol=0, atol=0)
    dec = DecoderBlock(D, H, drop_path=0.5).train()
    tgt, mem = torch.randn(8, 3, D), torch.randn(8, 5, D)
    assert not torch.allclose(dec(tgt, mem), dec(tgt, mem))
    dec.eval()
    torch.testing.assert_close(dec(tgt, mem), dec(tgt, mem), rtol=0, atol=0)


@pytest.mark.parametrize("act", ["gelu", "gelu_tanh", "relu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_inference_mlp_matches_timm_mlp(act, dtype):
    from timm.layers import Mlp as TimmMlp

    from vitkit.kernels.packed import packing_available
    from vitkit.layers.blocks import make_act
    from vitkit.layers.mlp import Mlp

    mlp = Mlp(32, 96, act_layer=make_act(act)).eval().to(dtype)
    ref = TimmMlp(32, 96, act_layer=make_act(act)).eval().to(dtype)
    ref.load_state_dict(mlp.state_dict())  # same parameter names as timm's
    x = torch.randn(2, 7, 32).to(dtype)
    with torch.no_grad(), torch.profiler.profile() as prof:
        out, expected = mlp(x), ref(x)
    fused = any("_linear_pointwise" in e.key for e in prof.key_averages())
    assert fused == packing_available(dtype)  # the fused kernel ran wherever this CPU supports it
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    assert out.shape == (2, 7, 32) and out.dtype == dtype
    torch.testing.assert_close(out.float(), expected.float(), atol=tol, rtol=tol)
    y = mlp(x.requires_grad_())  # with autograd on, timm's path (the fused kernel has no backward)
    y.float().sum().backward()
    assert x.grad is not None and mlp.fc1.weight.grad is not None
