"""Box relative position bias: token centres, decomposition and the locality it can express."""

from __future__ import annotations

import pytest
import torch

from vitkit.detection.box_rpb import BoxRPB, token_centres


def test_token_centres_are_relative_to_the_unpadded_grid():
    pad = torch.zeros(2, 3, 4, dtype=torch.bool)
    pad[1, :, 2:] = True  # image 1: 2 real columns
    pad[1, 2:, :] = True  # ... and 2 real rows
    cx, cy = token_centres(pad.flatten(1), (3, 4))
    torch.testing.assert_close(cx[0], torch.tensor([0.125, 0.375, 0.625, 0.875]))
    torch.testing.assert_close(cy[0], torch.tensor([1 / 6, 0.5, 5 / 6]))
    torch.testing.assert_close(cx[1, :2], torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(cy[1, :2], torch.tensor([0.25, 0.75]))


def test_bias_is_a_sum_of_per_axis_terms_of_edge_offsets():
    torch.manual_seed(0)
    rpb = BoxRPB(num_heads=3, hidden=16)
    boxes = torch.tensor([[[0.5, 0.5, 0.4, 0.2], [0.2, 0.7, 0.1, 0.3]]])  # (1, 2, 4)
    cx, cy = torch.linspace(0.1, 0.9, 5)[None], torch.linspace(0.1, 0.9, 4)[None]
    bias = rpb(boxes, cx, cy)  # (1, 3, 2, 20)
    assert bias.shape == (1, 3, 2, 20)
    grid = bias.view(1, 3, 2, 4, 5)  # rows = y, cols = x
    # Additive decomposition: b(y, x) - b(y, x') does not depend on y.
    diff = grid[..., :, 1:] - grid[..., :, :1]
    torch.testing.assert_close(diff, diff[..., :1, :].expand_as(diff), atol=1e-6, rtol=0)
    # The x term for query 0 at x = 0.3 uses the offsets from its edges 0.3 and 0.7: (0.0, -0.4), log-scaled.
    d = torch.tensor([0.3 - 0.3, 0.3 - 0.7])
    manual_x = rpb.mlp_x(torch.sign(d) * torch.log2(d.abs() * 8 + 1) / 3)  # (3,)
    manual_y = rpb.mlp_y(torch.sign(torch.tensor([0.1 - 0.4, 0.1 - 0.6])) *
                         torch.log2(torch.tensor([0.3, 0.5]) * 8 + 1) / 3)
    torch.testing.assert_close(grid[0, :, 0, 0, 1], manual_x + manual_y, atol=1e-5, rtol=0)


@pytest.mark.slow  # learns: the full suite runs it, the fast tier leaves it out
def test_bias_can_learn_to_favour_tokens_inside_the_box():
    torch.manual_seed(0)
    rpb = BoxRPB(num_heads=1, hidden=32)
    opt = torch.optim.Adam(rpb.parameters(), lr=1e-2)
    cx = cy = ((torch.arange(16) + 0.5) / 16)[None]  # (1, 16)
    for _ in range(200):
        c = torch.rand(1, 8, 2) * 0.6 + 0.2
        boxes = torch.cat((c, torch.rand(1, 8, 2) * 0.2 + 0.1), -1)  # (1, 8, 4)
        inside = ((cx[:, None, None, :] - boxes[..., 0, None, None]).abs() < boxes[..., 2, None, None] / 2) & \
                 ((cy[:, None, :, None] - boxes[..., 1, None, None]).abs() < boxes[..., 3, None, None] / 2)
        logp = rpb(boxes, cx, cy)[:, 0].log_softmax(-1)  # (1, 8, 256) attention over tokens
        loss = -(logp * inside.flatten(2)).sum(-1).div(inside.flatten(2).sum(-1).clamp(min=1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        attn = rpb(boxes, cx, cy)[:, 0].softmax(-1)
    mass = (attn * inside.flatten(2)).sum(-1)  # attention mass inside each box
    uniform = inside.flatten(2).float().mean(-1)  # what attention without the bias would put inside
    assert uniform.max() < 0.1 and mass.min() > 0.6, (uniform, mass)
