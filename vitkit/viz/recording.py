"""Reading attention weights without touching the models (:class:`AttentionRecorder`, a forward hook), and mapping
them onto the image (:func:`levels_to_image`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitkit.layers import MultiheadAttention


class AttentionRecorder:
    """Record the attention weights of every call of a :class:`MultiheadAttention` (a context manager).

    Attributes:
        weights: one (B, heads, Tq, Tk) float32 tensor per call, rows summing to 1 (masked keys get 0).
    """
    def __init__(self, module: MultiheadAttention) -> None:
        if not isinstance(module, MultiheadAttention):
            raise TypeError(f"expected a vitkit MultiheadAttention, got {type(module).__name__}")
        self.module = module
        self.weights: list[Tensor] = []
        self._handle = None

    def __enter__(self) -> AttentionRecorder:
        self._handle = self.module.register_forward_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()

    @torch.no_grad()
    def _hook(self, module: MultiheadAttention, args: tuple, kwargs: dict, output: Tensor) -> None:
        self.weights.append(module.attention_weights(*args, **kwargs))


class Capture:
    """Forward hooks that keep each module's last (args, kwargs, output); removed on exit."""
    def __init__(self, modules: Mapping[str, nn.Module | None]) -> None:
        self.modules = {k: m for k, m in modules.items() if m is not None}
        self.calls: dict[str, tuple[tuple, dict, Any]] = {}
        self._handles: list = []

    def __enter__(self) -> Capture:
        for name, module in self.modules.items():
            def hook(mod, args, kwargs, output, name=name):
                self.calls[name] = (args, kwargs, output)
            self._handles.append(module.register_forward_hook(hook, with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode for the block; its training flag restored after."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def grid_stride(encoder: nn.Module) -> float:
    """The encoder's token-grid stride in px of the resized image (its patch embedding's stride or patch size)."""
    pe = encoder.patch_embed
    return float(getattr(pe, "stride", getattr(pe, "patch_size", 16)))


def levels_to_image(weights: Tensor, shapes: Sequence[tuple[int, int]], strides: Sequence[float],
                    resized_hw: tuple[int, int], out_hw: tuple[int, int]) -> Tensor:
    """Attention over concatenated token grids -> an attention density over the image.

    Args:
        weights: (K, N) weights over the grids' tokens (prefix tokens removed), N = sum(h * w).
        shapes: (h, w) per grid; strides: its stride in px of the resized image.
        resized_hw: (H, W) of the resized image the model saw (grids anchored top-left).
        out_hw: (H, W) of the output map.

    Returns:
        (K, H_out, W_out): each grid's weights divided by its token area, bilinearly interpolated, summed over grids."""
    K = weights.shape[0]
    (Hr, Wr), (Ho, Wo) = resized_hw, out_hw
    ys = (torch.arange(Ho, dtype=torch.float32) + 0.5) * (Hr / Ho)  # (Ho,) resized px
    xs = (torch.arange(Wo, dtype=torch.float32) + 0.5) * (Wr / Wo)  # (Wo,)
    total, start = torch.zeros(K, Ho, Wo), 0
    for (h, w), s in zip(shapes, strides, strict=True):
        level = weights[:, start:start + h * w].float().reshape(K, 1, h, w) * (h * w)  # (K, 1, h, w) density
        gy, gx = ys / (s * h) * 2 - 1, xs / (s * w) * 2 - 1  # grid_sample coordinates (align_corners=False)
        grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)  # (Ho, Wo, 2) as (x, y)
        total += F.grid_sample(level.cpu(), grid[None].expand(K, -1, -1, -1), mode="bilinear",
                               padding_mode="border", align_corners=False)[:, 0]  # (K, Ho, Wo)
        start += h * w
    return total
