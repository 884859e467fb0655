"""2D positional encodings: sine (DETR), learned + resampled (ViT), axial RoPE."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vitkit.layers import LearnedPositionEncoding2D, RoPE2D, SinePositionEncoding2D, apply_rope

GRIDS = [(1, 1), (3, 5), (7, 7), (14, 9)]


def padded_mask(B: int, h: int, w: int, real: list[tuple[int, int]]) -> torch.Tensor:
    """(B, h, w) mask, True = padding, image b real over the top-left real[b] = (rows, cols)."""
    mask = torch.ones(B, h, w, dtype=torch.bool)
    for b, (r, c) in enumerate(real):
        mask[b, :r, :c] = False
    return mask


def reference_sine(mask: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """DETR's sine encoding, channel by channel: (B, h, w) mask -> (B, h, w, dim)."""
    not_mask = (~mask).float()
    y = not_mask.cumsum(1)
    x = not_mask.cumsum(2)
    y = y / (y[:, -1:, :] + 1e-6) * 2 * math.pi
    x = x / (x[:, :, -1:] + 1e-6) * 2 * math.pi
    half = dim // 2
    channels = []
    for coord in (y, x):  # y first, then x
        for i in range(half):
            arg = coord / (temperature ** (2 * (i // 2) / half))
            channels.append(torch.sin(arg) if i % 2 == 0 else torch.cos(arg))
    return torch.stack(channels, dim=-1)


# ----------------------------------------------------------------------------------------------- sine
@pytest.mark.parametrize("h,w", GRIDS)
def test_sine_shape_and_reference(h, w):
    pe = SinePositionEncoding2D(dim=16)
    mask = torch.zeros(2, h, w, dtype=torch.bool)
    out = pe(mask)
    assert out.shape == (2, h, w, 16) and out.dtype == torch.float32
    torch.testing.assert_close(out, reference_sine(mask, 16), atol=1e-5, rtol=1e-5)


def test_sine_reference_with_padding():
    mask = padded_mask(3, 6, 8, [(4, 5), (6, 8), (1, 2)])
    torch.testing.assert_close(SinePositionEncoding2D(dim=32)(mask), reference_sine(mask, 32), atol=1e-5, rtol=1e-5)


def test_sine_padding_aware():
    pe = SinePositionEncoding2D(dim=16)
    padded = pe(padded_mask(2, 6, 8, [(4, 5), (6, 8)]))
    alone = pe(torch.zeros(1, 4, 5, dtype=torch.bool))
    torch.testing.assert_close(padded[0, :4, :5], alone[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(padded[1], pe(torch.zeros(1, 6, 8, dtype=torch.bool))[0], atol=1e-6, rtol=0)


def test_sine_rejects_bad_dim():
    with pytest.raises(ValueError):
        SinePositionEncoding2D(dim=18)


# -------------------------------------------------------------------------------------------- learned
def test_learned_reference_grid_is_table():
    pe = LearnedPositionEncoding2D(dim=8, grid_size=(4, 6))
    out = pe(torch.zeros(3, 4, 6, dtype=torch.bool))
    table = pe.pos_embed[0].reshape(4, 6, 8)
    assert out.shape == (3, 4, 6, 8)
    for b in range(3):
        assert torch.equal(out[b], table)


@pytest.mark.parametrize("h,w", [(2, 3), (7, 5), (8, 12), (1, 1)])
def test_learned_resampled_bicubic_antialias(h, w):
    pe = LearnedPositionEncoding2D(dim=8, grid_size=(4, 6), num_prefix=1)
    out = pe(torch.zeros(2, h, w, dtype=torch.bool))
    table = pe.pos_embed[:, 1:].reshape(1, 4, 6, 8).permute(0, 3, 1, 2)  # (1, D, gh, gw)
    ref = F.interpolate(table, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
    ref = ref.permute(0, 2, 3, 1).expand(2, -1, -1, -1)  # (2, h, w, D)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)


def test_learned_padding_aware_and_zero_on_padding():
    pe = LearnedPositionEncoding2D(dim=8, grid_size=(4, 6))
    real = [(3, 5), (8, 9), (0, 0), (8, 2)]
    mask = padded_mask(4, 8, 9, real)
    out = pe(mask)
    assert out.shape == (4, 8, 9, 8)
    for b, (r, c) in enumerate(real):
        if r and c:
            alone = pe(torch.zeros(1, r, c, dtype=torch.bool))[0]
            torch.testing.assert_close(out[b, :r, :c], alone, atol=1e-6, rtol=0)
    assert torch.all(out[mask] == 0)


def test_learned_gradient_reaches_table():
    pe = LearnedPositionEncoding2D(dim=8, grid_size=(4, 6))
    pe(padded_mask(2, 5, 7, [(5, 7), (3, 4)])).square().sum().backward()
    assert pe.pos_embed.grad is not None and pe.pos_embed.grad.abs().sum() > 0


def test_learned_prefix():
    pe = LearnedPositionEncoding2D(dim=8, grid_size=(2, 3), num_prefix=2)
    assert pe.pos_embed.shape == (1, 2 + 6, 8)
    assert torch.equal(pe.prefix, pe.pos_embed[:, :2])
    assert LearnedPositionEncoding2D(dim=8, grid_size=(2, 3)).prefix is None


# ----------------------------------------------------------------------------------------------- rope
@pytest.mark.parametrize("h,w", GRIDS)
def test_rope_shapes_and_norm_preserved(h, w):
    rope = RoPE2D(head_dim=16)
    sin, cos = rope(torch.zeros(2, h, w, dtype=torch.bool))
    assert sin.shape == cos.shape == (2, h * w, 16)
    torch.testing.assert_close(sin.square() + cos.square(), torch.ones_like(sin))
    x = torch.randn(2, 3, h * w, 16)  # (B, heads, N, hd)
    y = apply_rope(x, (sin, cos))
    assert y.shape == x.shape
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5, rtol=1e-5)


def rope_scores(rope: RoPE2D, h: int, w: int) -> torch.Tensor:
    """(h, w, h, w) scores q_rot(p) . k_rot(p') for one fixed q and one fixed k vector."""
    sin, cos = rope(torch.zeros(1, h, w, dtype=torch.bool))
    q = torch.randn(rope.head_dim).expand(1, 1, h * w, -1)
    k = torch.randn(rope.head_dim).expand(1, 1, h * w, -1)
    s = apply_rope(q, (sin, cos))[0, 0] @ apply_rope(k, (sin, cos))[0, 0].T  # (h*w, h*w)
    return s.reshape(h, w, h, w)


def test_rope_scores_depend_only_on_relative_offset():
    rope = RoPE2D(head_dim=16, base=10.0)
    s = rope_scores(rope, 6, 7)
    p, k = (1, 2), (2, 0)
    for dy, dx in [(1, 0), (0, 3), (2, 1), (3, 4)]:
        torch.testing.assert_close(s[p[0] + dy, p[1] + dx, k[0] + dy, k[1] + dx], s[p + k], atol=1e-4, rtol=1e-4)
    for other in [(2, 1), (3, 0), (1, 2)]:  # a different offset (both axes matter)
        assert not torch.isclose(s[p + other], s[p + k], atol=1e-3)


def test_rope_coordinates_are_the_same_in_train_mode():
    mask = torch.zeros(2, 4, 5, dtype=torch.bool)
    plain = RoPE2D(head_dim=8).coords(mask)
    assert torch.equal(RoPE2D(head_dim=8).train().coords(mask), plain)


def test_rope_padding_aware():
    rope = RoPE2D(head_dim=8)
    sin, cos = rope(padded_mask(1, 6, 8, [(4, 5)]))
    sin_alone, cos_alone = rope(torch.zeros(1, 4, 5, dtype=torch.bool))
    torch.testing.assert_close(sin.reshape(6, 8, 8)[:4, :5], sin_alone.reshape(4, 5, 8))
    torch.testing.assert_close(cos.reshape(6, 8, 8)[:4, :5], cos_alone.reshape(4, 5, 8))


def test_apply_rope_leaves_prefix_tokens():
    sin, cos = RoPE2D(head_dim=8)(torch.zeros(2, 3, 3, dtype=torch.bool))
    x = torch.randn(2, 4, 2 + 9, 8)  # 2 prefix tokens + 9 grid tokens
    y = apply_rope(x, (sin, cos))
    assert torch.equal(y[:, :, :2], x[:, :, :2])
    torch.testing.assert_close(y[:, :, 2:], apply_rope(x[:, :, 2:], (sin, cos)))
    assert not torch.allclose(y[:, :, 2:], x[:, :, 2:])


def test_rope_rejects_bad_head_dim():
    with pytest.raises(ValueError):
        RoPE2D(head_dim=10)
