"""Shared optimiser groups and LR schedule of the Lightning modules."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from vitkit.train.optim import adamw_param_groups, warmup_schedule


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.token_embed = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_param_groups_split_decay_and_slow_prefix():
    m = _Toy()
    groups = adamw_param_groups(m, lr=1.0, weight_decay=0.1, slow_prefix="encoder.", slow_lr_mult=0.1)
    by_param = {id(p): g for g in groups for p in g["params"]}
    assert id(m.frozen.weight) not in by_param  # frozen parameters are left out
    assert len(by_param) == sum(p.requires_grad for p in m.parameters())
    assert (by_param[id(m.encoder[0].weight)]["lr"], by_param[id(m.encoder[0].weight)]["weight_decay"]) == (0.1, 0.1)
    assert by_param[id(m.encoder[1].weight)]["weight_decay"] == 0.0  # norm
    assert (by_param[id(m.head.weight)]["lr"], by_param[id(m.head.weight)]["weight_decay"]) == (1.0, 0.1)
    assert by_param[id(m.head.bias)]["weight_decay"] == 0.0
    assert by_param[id(m.token_embed.weight)]["weight_decay"] == 0.0  # embeddings


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_warmup_then_cosine_or_step(schedule):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_schedule(opt, total_steps=100, warmup_steps=10, min_lr_ratio=0.01, schedule=schedule, lr_drop=0.5)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # linear warmup
    if schedule == "cosine":
        assert lrs[10] == pytest.approx(1.0) and lrs[55] == pytest.approx(0.505, abs=1e-3)
        assert lrs[99] == pytest.approx(0.01, abs=1e-3) and all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    else:
        assert lrs[49] == 1.0 and lrs[50] == pytest.approx(0.1) and lrs[99] == pytest.approx(0.1)


def test_fused_adamw_gradients_are_clipped_without_a_scaler():
    from types import SimpleNamespace

    from vitkit.train.optim import adamw, clip_fused_gradients

    model = torch.nn.Linear(4, 3)
    opt = adamw(list(model.parameters()), lr=1e-3, weight_decay=0.0)
    assert opt.defaults["fused"]
    model(torch.randn(5, 4) * 100).square().sum().backward()
    bf16 = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=None))
    fp16 = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=object()))
    assert not clip_fused_gradients(model, fp16, opt, 1.0, "norm")  # Lightning's own path under a scaler
    assert torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]) > 1.0
    assert clip_fused_gradients(model, bf16, opt, 1.0, "norm")
    assert torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]) == pytest.approx(1.0, rel=1e-4)
    assert clip_fused_gradients(model, bf16, opt, 0.1, "value")
    assert max(float(p.grad.abs().max()) for p in model.parameters()) <= 0.1 + 1e-7
    assert not adamw(list(model.parameters()), 1e-3, 0.0, fused=False).defaults["fused"]
