"""ViTEncoder and TransformerDecoder: shapes, padding invariance, gradients, checkpointing, KV cache."""

from __future__ import annotations

import pytest
import torch

from tests.support.devices import on_devices
from vitkit.core import TransformerDecoder, ViTEncoder
from vitkit.layers import PatchEmbed

D, HEADS = 32, 4


def tiny_encoder(**kw) -> ViTEncoder:
    kw = {"embed_dim": D, "depth": 2, "num_heads": HEADS, "patch_size": 16, "img_size": 64, **kw}
    return ViTEncoder(**kw).eval()


def padded_pair() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 100 x 84 image alone, and the same image top-left in a zero-padded batch with a 160 x 200 one."""
    small, big = torch.randn(1, 3, 100, 84), torch.randn(1, 3, 160, 200)
    images = torch.zeros(2, 3, 160, 200)
    mask = torch.ones(2, 160, 200, dtype=torch.bool)
    images[0, :, :100, :84], mask[0, :100, :84] = small[0], False
    images[1], mask[1] = big[0], False
    return small, images, mask


@pytest.mark.parametrize("prefix", [dict(class_token=True), dict(class_token=True, reg_tokens=3),
                                    dict(class_token=False), dict(class_token=False, reg_tokens=2)])
def test_encoder_prefix_shapes(prefix):
    enc = tiny_encoder(**prefix)
    P = int(prefix["class_token"]) + prefix.get("reg_tokens", 0)
    out = enc(torch.randn(2, 3, 48, 80))  # grid 3 x 5
    assert enc.num_prefix == out.num_prefix == P
    assert out.tokens.shape == (2, P + 15, D) and out.grid == (3, 5)
    assert out.mask.shape == (2, P + 15) and not out.mask.any()
    assert torch.equal(enc.forward_features(torch.ones(1, 3, 48, 80)), enc(torch.ones(1, 3, 48, 80)).tokens)


@pytest.mark.parametrize("pos_embed", ["learned", "sine", "rope"])
@pytest.mark.parametrize("pos_mode", ["input", "qk"])
def test_encoder_pos_variants(pos_embed, pos_mode):
    enc = tiny_encoder(pos_embed=pos_embed, pos_mode=pos_mode)
    x = torch.randn(2, 3, 48, 80)
    mask = torch.zeros(2, 48, 80, dtype=torch.bool)
    mask[1, :, 40:] = True
    out = enc(x, mask)
    assert out.tokens.shape == (2, 1 + 15, D) and torch.isfinite(out.tokens).all()
    assert torch.equal(out.mask[:, 0], torch.zeros(2, dtype=torch.bool))
    assert torch.equal(out.mask[1, 1:].reshape(3, 5), torch.tensor([[False] * 3 + [True] * 2] * 3))
    if pos_mode == "qk" and pos_embed in ("learned", "sine"):
        assert out.pos.shape == (2, 16, D)
    else:
        assert out.pos is None
    if pos_embed == "sine" and pos_mode == "qk":
        assert torch.all(out.pos[:, 0] == 0)


def test_encoder_rejects_bad_options():
    with pytest.raises(ValueError):
        tiny_encoder(pos_embed="alibi")
    with pytest.raises(ValueError):
        tiny_encoder(pos_embed="none")
    with pytest.raises(ValueError):
        tiny_encoder(pos_mode="both")
    with pytest.raises(ValueError):  # patch source width != embed_dim
        ViTEncoder(PatchEmbed(16, 3, 32), embed_dim=48, depth=1, num_heads=4)


@on_devices
@pytest.mark.parametrize("pos_embed", ["learned", "sine", "rope"])
@pytest.mark.parametrize("pos_mode", ["input", "qk"])
def test_encoder_padding_invariance(perturb, pos_embed, pos_mode, device):
    enc = perturb(tiny_encoder(pos_embed=pos_embed, pos_mode=pos_mode, reg_tokens=1)).to(device)
    small, images, mask = (t.to(device) for t in padded_pair())
    with torch.no_grad():
        alone = enc(small)  # grid 7 x 6
        batched = enc(images, mask)  # grid 10 x 13
        garbage = images.clone()  # new values on every pixel of the fully padded patches (rows >= 112, cols >= 96)
        garbage[0, :, 112:] = 5.0
        garbage[0, :, :, 96:] = -3.0
        changed = enc(garbage, mask)
    P = enc.num_prefix
    assert alone.tokens.shape == (1, P + 42, D) and batched.tokens.shape == (2, P + 130, D)
    real = batched.tokens[0, P:].reshape(10, 13, D)[:7, :6].reshape(42, D)
    torch.testing.assert_close(real, alone.tokens[0, P:], atol=1e-5, rtol=0)
    torch.testing.assert_close(batched.tokens[0, :P], alone.tokens[0, :P], atol=1e-5, rtol=0)  # class + register
    keep = ~batched.mask[0]
    assert keep.sum() == P + 42
    torch.testing.assert_close(changed.tokens[0, keep], batched.tokens[0, keep], atol=1e-5, rtol=0)
    torch.testing.assert_close(changed.tokens[1], batched.tokens[1], atol=1e-5, rtol=0)


def assert_all_grads(module: torch.nn.Module) -> None:
    for name, p in module.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name}: no gradient"
            assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient"
            assert p.grad.abs().sum() > 0, f"{name}: zero gradient"


def test_encoder_gradients_reach_every_parameter(perturb):
    enc = perturb(tiny_encoder(pos_embed="learned", class_token=True)).train()
    out = enc(torch.randn(2, 3, 64, 64))
    (out.tokens * torch.randn_like(out.tokens)).sum().backward()
    assert_all_grads(enc)


def tiny_decoder(**kw) -> TransformerDecoder:
    return TransformerDecoder(**{"dim": D, "depth": 3, "num_heads": HEADS, "mlp_ratio": 2.0, **kw}).eval()


def test_decoder_output_shapes():
    tgt, mem = torch.randn(2, 5, D), torch.randn(2, 12, D)
    assert tiny_decoder()(tgt, mem).shape == (3, 2, 5, D)
    assert tiny_decoder(return_intermediate=False)(tgt, mem).shape == (2, 5, D)
    dec = tiny_decoder()
    last = tiny_decoder(return_intermediate=False)
    last.load_state_dict(dec.state_dict())
    torch.testing.assert_close(dec(tgt, mem)[-1], last(tgt, mem), atol=1e-6, rtol=1e-6)


def test_decoder_gradients_reach_every_parameter(perturb):
    dec = perturb(tiny_decoder(norm_first=False)).train()
    out = dec(torch.randn(2, 5, D), torch.randn(2, 12, D), query_pos=torch.randn(1, 5, D),
              memory_pos=torch.randn(2, 12, D))
    (out * torch.randn_like(out)).sum().backward()
    assert_all_grads(dec)


def test_decoder_memory_key_padding_mask():
    dec = tiny_decoder()
    tgt, mem = torch.randn(2, 5, D), torch.randn(2, 12, D)
    mpos = torch.randn(2, 12, D)
    mkpm = torch.zeros(2, 12, dtype=torch.bool)
    mkpm[1, 7:] = True
    mem2, mpos2 = mem.clone(), mpos.clone()
    mem2[1, 7:], mpos2[1, 7:] = 100.0, -7.0
    out = dec(tgt, mem, memory_pos=mpos, memory_key_padding_mask=mkpm)
    torch.testing.assert_close(dec(tgt, mem2, memory_pos=mpos2, memory_key_padding_mask=mkpm), out)
    assert not torch.allclose(dec(tgt, mem2, memory_pos=mpos2), dec(tgt, mem, memory_pos=mpos))


@pytest.mark.parametrize("norm_first", [True, False])
def test_decoder_kv_cache_matches_full_causal(perturb, norm_first):
    dec = perturb(tiny_decoder(norm_first=norm_first))
    tgt, mem, mpos = torch.randn(2, 6, D), torch.randn(2, 12, D), torch.randn(1, 12, D)
    mkpm = torch.zeros(2, 12, dtype=torch.bool)
    mkpm[0, 9:] = True
    kw = dict(memory_pos=mpos, memory_key_padding_mask=mkpm, is_causal=True)
    with torch.no_grad():
        full = dec(tgt, mem, **kw)  # (L, B, T, D)
        caches = dec.init_cache()
        steps = [dec(tgt[:, :2], mem, caches=caches, **kw)]  # prefill two tokens, then one at a time
        steps += [dec(tgt[:, t : t + 1], mem, caches=caches, **kw) for t in range(2, 6)]
    assert all(c.length == 6 for c, _ in caches) and all(x.length == 12 for _, x in caches)
    torch.testing.assert_close(torch.cat(steps, dim=2), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm_first", [True, False])
def test_decoder_memory_groups_match_copied_memory(perturb, norm_first):
    """g target rows per memory row (an image's captions) give what g copies of the memory give, gradients too."""
    dec = perturb(tiny_decoder(norm_first=norm_first)).train()
    g = 3
    tgt, mem, mpos = torch.randn(2 * g, 5, D), torch.randn(2, 12, D), torch.randn(2, 12, D)
    qpos = torch.randn(2 * g, 5, D)
    mkpm = torch.zeros(2, 12, dtype=torch.bool)
    mkpm[1, 8:] = True
    mem.requires_grad_(True)
    kw = dict(query_pos=qpos, is_causal=True)
    grouped = dec(tgt, mem, memory_pos=mpos, memory_key_padding_mask=mkpm, memory_groups=g, **kw)
    copied = dec(tgt, mem.repeat_interleave(g, 0), memory_pos=mpos.repeat_interleave(g, 0),
                 memory_key_padding_mask=mkpm.repeat_interleave(g, 0), **kw)
    torch.testing.assert_close(grouped, copied, atol=1e-5, rtol=1e-5)
    weights = torch.randn_like(grouped)
    (grad_grouped,) = torch.autograd.grad((grouped * weights).sum(), mem)
    (grad_copied,) = torch.autograd.grad((copied * weights).sum(), mem)
    torch.testing.assert_close(grad_grouped, grad_copied, atol=1e-5, rtol=1e-5)
    # the rows are tied to their own memory row: swapping the two memories changes the output
    assert not torch.allclose(dec(tgt, mem.flip(0), memory_pos=mpos.flip(0), memory_groups=g, **kw), grouped)
    with pytest.raises(ValueError, match="memory_groups"):
        dec(tgt[:5], mem, memory_groups=g)
    with pytest.raises(ValueError, match="memory_groups"):
        dec(tgt, mem, memory_groups=g, caches=dec.init_cache())
