"""Shared optimiser groups and LR schedule of the Lightning modules."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from vitkit.captioning.module import CaptionModule
from vitkit.detection.module import DetectionModule
from vitkit.training.guards import ConfigError
from vitkit.training.module import TaskModule
from vitkit.training.optim import adamw_param_groups, warmup_schedule


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

    from vitkit.training.optim import adamw, clip_fused_gradients

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


class _ToyTask(TaskModule):
    """The smallest task module: the base reads lr, weight_decay, warmup_steps, min_lr_ratio (+ schedule, lr_drop)."""

    def __init__(self, lr: float = 1.0, weight_decay: float = 0.1, warmup_steps: int = 0, min_lr_ratio: float = 0.01,
                 nonfinite: str = "raise", **options) -> None:
        super().__init__(nonfinite)
        self.save_hyperparameters()
        self.model = _Toy()

    def param_groups(self) -> list[dict]:
        return adamw_param_groups(self.model, self.hparams.lr, self.hparams.weight_decay, "encoder.", 0.1)


@pytest.mark.parametrize("schedule", [{}, {"schedule": "step", "lr_drop": 0.5}])
def test_task_module_builds_fused_adamw_and_the_schedule_from_its_hyperparameters(schedule):
    from types import SimpleNamespace

    module = _ToyTask(**schedule)
    module._trainer = SimpleNamespace(estimated_stepping_batches=100, precision_plugin=SimpleNamespace(scaler=None))
    config = module.configure_optimizers()
    opt, sched = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step" and opt.defaults["fused"]  # no gradient scaler: fused
    assert sorted({g["lr"] for g in opt.param_groups}) == [0.1, 1.0]  # the task's groups: a slow encoder
    factor = sched.lr_lambdas[0]
    if schedule:  # the task's own schedule settings reach warmup_schedule
        assert (factor(49), factor(50)) == (1.0, pytest.approx(0.1))
    else:  # a task without them (captioning) gets the cosine schedule
        assert factor(50) == pytest.approx(0.505, abs=1e-2) and factor(99) == pytest.approx(0.01, abs=1e-3)
    fp16 = SimpleNamespace(estimated_stepping_batches=100, precision_plugin=SimpleNamespace(scaler=object()))
    module._trainer = fp16
    assert not module.configure_optimizers()["optimizer"].defaults["fused"]  # Lightning clips under a scaler


def test_bad_nonfinite_mode_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model\.nonfinite"):
        _ToyTask(nonfinite="ignore")


def test_both_task_modules_take_the_shared_code_from_the_base():
    shared = {"configure_optimizers", "configure_gradient_clipping", "on_before_optimizer_step", "skip_nonfinite"}
    for cls in (DetectionModule, CaptionModule):
        assert issubclass(cls, TaskModule)
        assert not shared & set(vars(cls)), f"{cls.__name__} re-implements {shared & set(vars(cls))}"
