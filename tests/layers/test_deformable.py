"""Multi-scale deformable cross-attention: sampling arithmetic, padding, and the DETR switch."""

from __future__ import annotations

import pytest
import torch

from tests.support.devices import on_devices
from vitkit.layers import KVCache
from vitkit.layers.deformable import MSDeformableAttention, valid_ratios


def _identity_attention(levels: int = 1, points: int = 1, dim: int = 4, heads: int = 1,
                        device: str = "cpu") -> MSDeformableAttention:
    """Value and output projections are identities; offsets and weights are set by each test. On ``device``."""
    m = MSDeformableAttention(dim, heads, levels, points)
    with torch.no_grad():
        for lin in (m.value_proj, m.output_proj):
            lin.weight.copy_(torch.eye(dim))
            lin.bias.zero_()
        m.sampling_offsets.bias.zero_()  # every point on the reference centre
    return m.to(device)


@on_devices
def test_a_point_on_the_box_centre_reads_the_bilinear_value_there(device):
    m = _identity_attention(device=device)
    grid = torch.arange(16, dtype=torch.float32, device=device).view(4, 4)  # value[y, x] = 4y + x in every channel
    value = grid.flatten()[None, :, None].expand(1, 16, 4)  # (1, 16, 4)
    # Centre (0.5, 0.5) sits between cells (1, 1), (1, 2), (2, 1), (2, 2): mean = (5 + 6 + 9 + 10) / 4 = 7.5.
    # Centre (0.125, 0.375) is the middle of cell (y=1, x=0): 4.
    ref = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.125, 0.375, 0.2, 0.2]]], device=device)
    out = m(torch.zeros(1, 2, 4, device=device), value=value, reference=ref, shapes=[(4, 4)],
            ratios=torch.ones(1, 1, 2, device=device))
    torch.testing.assert_close(out[0, :, 0], torch.tensor([7.5, 4.0], device=device))


@on_devices
def test_offsets_scale_with_the_box_and_weights_mix_the_levels(device):
    m = _identity_attention(levels=2, points=1, device=device)
    with torch.no_grad():
        m.sampling_offsets.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))  # level 0: +x by half the box width
    v0 = torch.arange(16, dtype=torch.float32).view(4, 4)  # x runs fastest
    v1 = torch.full((2, 2), 100.0)
    value = torch.cat((v0.flatten(), v1.flatten()))[None, :, None].expand(1, 20, 4).to(device)
    # Box centre x 0.375 (cell 1), width 0.5: level 0 reads x = 0.375 + 0.25 = 0.625 (cell 2) on row y=1 -> 6.
    ref = torch.tensor([[[0.375, 0.375, 0.5, 0.5]]], device=device)
    out = m(torch.zeros(1, 1, 4, device=device), value=value, reference=ref, shapes=[(4, 4), (2, 2)],
            ratios=torch.ones(1, 2, 2, device=device))
    # Zero-initialised weights give a uniform softmax over the two levels' points.
    torch.testing.assert_close(out[0, 0, 0], torch.tensor((6.0 + 100.0) / 2, device=device))


@on_devices
def test_valid_ratios_map_the_unpadded_frame_onto_the_padded_grid(device):
    pad = torch.ones(1, 4, 6, dtype=torch.bool, device=device)
    pad[0, :3, :5] = False  # 3 x 5 real tokens of 4 x 6
    pad2 = torch.ones(1, 2, 3, dtype=torch.bool, device=device)
    pad2[0, :2, :3] = False
    r = valid_ratios(torch.cat((pad.flatten(1), pad2.flatten(1)), 1), [(4, 6), (2, 3)])
    torch.testing.assert_close(r, torch.tensor([[[5 / 6, 3 / 4], [1.0, 1.0]]], device=device))
    m = _identity_attention(device=device)
    grid = torch.arange(24, dtype=torch.float32, device=device).view(4, 6)
    value = grid.flatten()[None, :, None].expand(1, 24, 4)
    # x: the centre of column 0 of 5 real ones; y: row 1.5 of 3
    ref = torch.tensor([[[0.1, 2 / 3, 0.2, 0.2]]], device=device)
    out = m(torch.zeros(1, 1, 4, device=device), value=value, key_padding_mask=pad.flatten(1), reference=ref,
            shapes=[(4, 6)], ratios=r[:, :1])
    torch.testing.assert_close(out[0, 0, 0], torch.tensor((6.0 + 12.0) / 2, device=device))  # rows 1 and 2 of column 0


@on_devices
def test_padding_values_are_never_read(device):
    m = _identity_attention(device=device)
    value = torch.ones(1, 16, 4, device=device)
    pad = torch.zeros(1, 16, dtype=torch.bool, device=device)
    pad[0, 12:] = True  # last row is padding
    value[0, 12:] = 1e6
    ref = torch.tensor([[[0.5, 1.0, 0.2, 0.2]]], device=device)  # centre on the boundary: last real row / padding
    out = m(torch.zeros(1, 1, 4, device=device), value=value, key_padding_mask=pad, reference=ref, shapes=[(4, 4)],
            ratios=torch.tensor([[[1.0, 0.75]]], device=device))
    torch.testing.assert_close(out[0, 0, 0], torch.tensor(0.5, device=device))  # half the real row, half zeroed padding


def test_global_attention_arguments_are_refused():
    m = _identity_attention()
    with pytest.raises(ValueError, match="cache"):
        m(torch.zeros(1, 1, 4), value=torch.zeros(1, 16, 4), reference=torch.full((1, 1, 4), 0.5), shapes=[(4, 4)],
          ratios=torch.ones(1, 1, 2), cache=KVCache(static=True))


@on_devices
def test_gradients_reach_offsets_weights_and_values(device):
    torch.manual_seed(0)
    m = MSDeformableAttention(16, 4, 2, 4).to(device)
    q = torch.randn(2, 5, 16).to(device)
    value = torch.randn(2, 16 + 4, 16).to(device)
    ref = (torch.rand(2, 5, 4) * 0.5 + 0.25).to(device)
    out = m(q, value=value, reference=ref, shapes=[(4, 4), (2, 2)], ratios=torch.ones(2, 2, 2, device=device))
    out.square().sum().backward()
    for p in (m.sampling_offsets.weight, m.attention_weights.weight, m.value_proj.weight, m.output_proj.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
