"""MultiheadAttention: parity with nn.MultiheadAttention, masks, KV cache, RoPE."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.support.devices import on_devices
from vitkit.layers import KVCache, MultiheadAttention, RoPE2D, apply_rope

D, H = 32, 4


def pair(device: str = "cpu") -> tuple[MultiheadAttention, nn.MultiheadAttention]:
    """vitkit attention and torch's reference with the same (perturbed) weights, both in eval mode, on ``device``."""
    ours = MultiheadAttention(D, H).eval()
    ref = nn.MultiheadAttention(D, H, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.normal_(std=0.2)
        ref.in_proj_bias.normal_(std=0.2)
        ref.out_proj.weight.normal_(std=0.2)
        ref.out_proj.bias.normal_(std=0.2)
        ours.qkv.weight.copy_(ref.in_proj_weight)
        ours.qkv.bias.copy_(ref.in_proj_bias)
        ours.proj.weight.copy_(ref.out_proj.weight)
        ours.proj.bias.copy_(ref.out_proj.bias)
    return ours.to(device), ref.to(device)


def padding(B: int, T: int, lengths: list[int], device: str = "cpu") -> torch.Tensor:
    return (torch.arange(T)[None, :] >= torch.tensor(lengths)[:, None]).to(device)  # (B, T), True = padding


def manual_attention(attn: MultiheadAttention, q_in, k_in, v_in, bias=None, rope=None):
    """softmax(Q K^T / sqrt(d) + bias) V, then the output projection; optional RoPE on q and k."""
    w, b = attn.qkv.weight.chunk(3), attn.qkv.bias.chunk(3)
    q, k, v = (F.linear(t, wi, bi) for t, wi, bi in zip((q_in, k_in, v_in), w, b, strict=True))
    q, k, v = (t.unflatten(-1, (H, D // H)).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
    if rope is not None:
        q, k = apply_rope(q, rope), apply_rope(k, rope)
    scores = q @ k.transpose(-1, -2) / (D // H) ** 0.5
    if bias is not None:
        scores = scores + bias
    out = (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)  # (B, T, D)
    return attn.proj(out)


@on_devices
@pytest.mark.parametrize("kind", ["self", "detr_qk", "cross", "cross_kv_differ"])
def test_matches_torch_multihead_attention(kind, device):
    ours, ref = pair(device)
    x, pos, mem, mem2 = (torch.randn(2, n, D).to(device) for n in (7, 7, 9, 9))
    if kind == "self":
        q, k, v = x, x, x
    elif kind == "detr_qk":
        q = k = x + pos
        v = x
    elif kind == "cross":
        q, k, v = x, mem, mem
    else:
        q, k, v = x, mem, mem2
    kpm = padding(2, k.shape[1], [k.shape[1], 4], device)
    with torch.no_grad():
        out = ours(q, k, v, key_padding_mask=kpm)
        expected = ref(q, k, v, key_padding_mask=kpm, need_weights=False)[0]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_default_key_and_value_is_self_attention():
    ours, _ = pair()
    x = torch.randn(2, 5, D)
    torch.testing.assert_close(ours(x), ours(x, x.clone(), x.clone()), atol=1e-6, rtol=1e-6)


@on_devices
def test_key_padding_mask_blocks_padded_keys(device):
    attn, _ = pair(device)
    x, mem = torch.randn(2, 5, D).to(device), torch.randn(2, 8, D).to(device)
    kpm = padding(2, 8, [8, 3], device)
    mem2 = mem.clone()
    mem2[1, 3:] = torch.randn(5, D).to(device) * 10
    torch.testing.assert_close(attn(x, mem, key_padding_mask=kpm), attn(x, mem2, key_padding_mask=kpm))
    assert not torch.allclose(attn(x, mem), attn(x, mem2))


@on_devices
def test_causal_ignores_future_tokens(device):
    attn, _ = pair(device)
    x = torch.randn(2, 6, D).to(device)
    x2 = x.clone()
    x2[:, 4:] = torch.randn(2, 2, D).to(device)
    out, out2 = attn(x, is_causal=True), attn(x2, is_causal=True)
    torch.testing.assert_close(out[:, :4], out2[:, :4], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(out[:, 4:], out2[:, 4:])
    # Also through the explicit-mask path (a key padding mask forces it).
    kpm = torch.zeros(2, 6, dtype=torch.bool, device=device)
    torch.testing.assert_close(attn(x, is_causal=True, key_padding_mask=kpm), out, atol=1e-6, rtol=1e-6)


def test_bool_attn_mask_equals_neg_inf_bias():
    attn, _ = pair()
    x, mem = torch.randn(2, 5, D), torch.randn(2, 6, D)
    blocked = torch.rand(2, 1, 5, 6) < 0.4
    blocked[..., 0] = False  # keep one key per row
    bias = torch.zeros(2, 1, 5, 6).masked_fill(blocked, float("-inf"))
    out = attn(x, mem, attn_mask=blocked)
    torch.testing.assert_close(out, manual_attention(attn, x, mem, mem, bias=bias), atol=1e-5, rtol=1e-5)
    with pytest.raises(TypeError):
        attn(x, mem, attn_mask=bias)


@on_devices
def test_fully_masked_row_is_finite(device):
    # vitkit lets a query with no visible key attend to all keys (its output is padding anyway), so the
    # result is finite on every SDPA backend; torch's CPU kernel alone would return zeros for such a row.
    attn, _ = pair(device)
    x, mem = torch.randn(2, 4, D, device=device, requires_grad=True), torch.randn(2, 6, D).to(device)
    out = attn(x, mem, key_padding_mask=torch.ones(2, 6, dtype=torch.bool, device=device))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, attn(x, mem), atol=1e-6, rtol=1e-6)
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(attn.qkv.weight.grad).all()
    blocked = torch.zeros(1, 1, 4, 6, dtype=torch.bool, device=device)
    blocked[..., 2, :] = True  # one query row sees nothing; the attn_mask path
    out = attn(x, mem, attn_mask=blocked)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, attn(x, mem), atol=1e-6, rtol=1e-6)


@on_devices
def test_kv_cache_token_by_token_equals_full_causal(device):
    attn, _ = pair(device)
    x = torch.randn(2, 7, D).to(device)
    full = attn(x, is_causal=True)
    cache = KVCache()
    steps = [attn(x[:, t : t + 1], is_causal=True, cache=cache) for t in range(7)]
    assert cache.length == 7 and cache.k.shape == (2, H, 7, D // H)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


@on_devices
def test_kv_cache_chunked_prefill_equals_full_causal(device):
    attn, _ = pair(device)
    x = torch.randn(2, 7, D).to(device)
    full = attn(x, is_causal=True)
    cache = KVCache()
    out = torch.cat([attn(x[:, :3], is_causal=True, cache=cache), attn(x[:, 3:], is_causal=True, cache=cache)], 1)
    torch.testing.assert_close(out, full, atol=1e-5, rtol=1e-5)
    # with a key padding mask over all keys so far (token 1 of row 1 is padding)
    kpm = torch.zeros(2, 7, dtype=torch.bool, device=device)
    kpm[1, 1] = True
    full = attn(x, is_causal=True, key_padding_mask=kpm)
    assert not torch.allclose(full[1, 2:], attn(x, is_causal=True)[1, 2:], atol=1e-4)
    cache = KVCache()
    out = torch.cat([attn(x[:, :3], is_causal=True, key_padding_mask=kpm[:, :3], cache=cache),
                     attn(x[:, 3:], is_causal=True, key_padding_mask=kpm, cache=cache)], 1)
    torch.testing.assert_close(out, full, atol=1e-5, rtol=1e-5)


@on_devices
def test_static_cache_reused_and_reorder(device):
    attn, _ = pair(device)
    mem = torch.randn(3, 6, D).to(device)
    kpm = padding(3, 6, [6, 2, 4], device)
    cache = KVCache(static=True)
    q1, q2 = torch.randn(3, 2, D).to(device), torch.randn(3, 1, D).to(device)
    out1 = attn(q1, mem, key_padding_mask=kpm, cache=cache)
    k0 = cache.k
    out2 = attn(q2, mem, key_padding_mask=kpm, cache=cache)
    assert cache.k is k0 and cache.length == 6, "a static cache is filled once"
    torch.testing.assert_close(out1, attn(q1, mem, key_padding_mask=kpm), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out2, attn(q2, mem, key_padding_mask=kpm), atol=1e-6, rtol=1e-6)
    index = torch.tensor([2, 0, 0, 1], device=device)
    cache.reorder(index)
    assert torch.equal(cache.k, k0[index]) and cache.k.shape[0] == 4
    out3 = attn(q2[index], mem[index], key_padding_mask=kpm[index], cache=cache)
    torch.testing.assert_close(out3, out2[index], atol=1e-6, rtol=1e-6)
    KVCache().reorder(index)  # empty cache: no-op


def test_rope_inside_attention_matches_manual():
    attn, _ = pair()
    rope = RoPE2D(head_dim=D // H)(torch.zeros(2, 3, 4, dtype=torch.bool))  # 12 tokens
    x = torch.randn(2, 12, D)
    out = attn(x, rope=rope)
    assert not torch.allclose(out, attn(x), atol=1e-3)
    torch.testing.assert_close(out, manual_attention(attn, x, x, x, rope=rope), atol=1e-5, rtol=1e-5)
    # with a class token in front, rope covers the last 12 tokens only
    xc = torch.randn(2, 13, D)
    sin, cos = (torch.cat((torch.zeros(2, 1, D // H), t), 1) for t in rope)  # identity rotation on token 0
    cos[:, 0] = 1
    torch.testing.assert_close(attn(xc, rope=rope), manual_attention(attn, xc, xc, xc, rope=(sin, cos)),
                               atol=1e-5, rtol=1e-5)


def test_kv_cache_is_stored_contiguous():
    attn = MultiheadAttention(32, 4).eval()
    memory, query = torch.randn(2, 10, 32), torch.randn(2, 1, 32)
    for cache in (KVCache(static=True), KVCache()):
        with torch.no_grad():
            first = attn(query, memory, memory, cache=cache)
            again = attn(query, memory, memory, cache=cache)
        assert cache.k.is_contiguous() and cache.v.is_contiguous()
        if cache.static:
            torch.testing.assert_close(first, again)  # the cached keys/values are the same numbers


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("mask_kind", [None, "bool", "float"])
def test_single_query_path_matches_sdpa(dtype, tol, mask_kind):
    from vitkit.kernels.attention import single_query_attention

    q, k, v = (torch.randn(3, 4, n, 16).to(dtype) for n in (1, 9, 9))
    mask = None
    if mask_kind == "bool":
        mask = torch.rand(3, 1, 1, 9) > 0.3
        mask[..., 0] = True  # every row keeps a key
    elif mask_kind == "float":
        mask = torch.randn(3, 4, 1, 9).to(dtype)
    ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                                           attn_mask=None if mask is None else
                                                           (mask if mask.dtype == torch.bool else mask.float()))
    out = single_query_attention(q, k, v, mask)
    assert out.shape == (3, 4, 1, 16) and out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)
    if mask_kind == "bool":  # a masked key cannot move the output
        v2 = v.clone()
        v2[~mask.expand(3, 4, 1, 9)[:, :, 0]] += 100
        torch.testing.assert_close(single_query_attention(q, k, v2, mask), out)


@pytest.mark.parametrize("mask_kind", [None, "bool", "float"])
def test_bf16_matmul_attention_matches_fp32_sdpa(mask_kind):
    from vitkit.kernels.attention import bf16_matmul_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 32, generator=g) for n in (17, 23, 23))
    mask = None
    if mask_kind == "bool":
        mask = torch.rand(2, 1, 17, 23, generator=g) > 0.3
        mask[..., 0] = True
    elif mask_kind == "float":
        mask = torch.randn(2, 3, 17, 23, generator=g)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = bf16_matmul_attention(*(t.bfloat16() for t in (q, k, v)), mask)
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)


def test_bf16_matmul_path_only_without_grad_and_for_small_score_matrices(monkeypatch):
    import vitkit.kernels.attention as kernels_mod
    import vitkit.layers.attention as attention_mod

    calls = []
    real = attention_mod.bf16_matmul_attention
    monkeypatch.setattr(attention_mod, "bf16_matmul_attention", lambda *a: calls.append(1) or real(*a))
    attn = MultiheadAttention(32, 4).eval().bfloat16()
    x = torch.randn(2, 10, 32).bfloat16()
    with torch.no_grad():
        attn(x)
    assert len(calls) == 1  # bf16, no autograd: the matmul path
    attn(x)
    assert len(calls) == 1  # autograd on: SDPA
    with torch.no_grad():
        attn(x.float().bfloat16(), is_causal=True)
    assert len(calls) == 1  # causal self-attention: SDPA's causal kernel
    monkeypatch.setattr(kernels_mod, "MATMUL_ATTENTION_MAX_SCORES", 2 * 4 * 10 * 10 - 1)
    with torch.no_grad():
        attn(x)
    assert len(calls) == 1  # score matrix over the cap: SDPA (flash, bounded memory)
