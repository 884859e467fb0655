"""Optimiser and schedule shared by the Lightning modules: AdamW with weight-decay groups, warmup + cosine/step."""

from __future__ import annotations

import math

import torch
from torch import nn


def adamw_param_groups(model: nn.Module, lr: float, weight_decay: float, slow_prefix: str = "",
                       slow_lr_mult: float = 1.0) -> list[dict]:
    """AdamW groups: no decay on norms, biases, embeddings and prefix tokens; ``slow_lr_mult`` x lr for parameters
    whose name starts with ``slow_prefix`` (a backbone or encoder). Frozen and tied parameters are counted once."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():  # named_parameters yields tied weights once
        if not p.requires_grad:
            continue
        slow = bool(slow_prefix) and name.startswith(slow_prefix)
        no_decay = p.ndim <= 1 or name.endswith(("cls_token", "reg_token", "pos_embed")) or "embed.weight" in name
        groups.setdefault((slow, no_decay), []).append(p)
    return [{"params": ps, "lr": lr * (slow_lr_mult if slow else 1.0), "weight_decay": 0.0 if nd else weight_decay}
            for (slow, nd), ps in groups.items()]


def adamw(groups: list[dict] | list[nn.Parameter], lr: float, weight_decay: float,
          fused: bool = True) -> torch.optim.AdamW:
    """torch's AdamW, fused when ``fused`` and every parameter is a floating-point CPU/CUDA tensor; pass ``fused=False``
    under a gradient scaler (fp16)."""
    params = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = fused and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=fused or None)


def uses_grad_scaler(trainer) -> bool:
    """True when the trainer's precision plugin scales gradients (fp16 mixed precision)."""
    return getattr(getattr(trainer, "precision_plugin", None), "scaler", None) is not None


def clip_fused_gradients(module: nn.Module, trainer, optimizer: torch.optim.Optimizer, clip_val: float | None,
                         algorithm: str | None) -> bool:
    """Clip gradients of a fused optimizer without a gradient scaler (bf16 / fp32); False, doing nothing, when
    Lightning's own clipping applies."""
    if not clip_val or not optimizer.defaults.get("fused") or uses_grad_scaler(trainer):
        return False
    params = [p for p in module.parameters() if p.grad is not None]
    if algorithm in (None, "norm"):
        torch.nn.utils.clip_grad_norm_(params, clip_val)
    else:
        torch.nn.utils.clip_grad_value_(params, clip_val)
    return True


def warmup_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0,
                    schedule: str = "cosine", lr_drop: float = 2 / 3) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step LR factor: linear warmup, then cosine down to ``min_lr_ratio`` or a x0.1 step at ``lr_drop`` of
    the run (DETR's recipe)."""
    total = max(1, total_steps)

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "step":
            return 0.1 if step >= lr_drop * total else 1.0
        t = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
