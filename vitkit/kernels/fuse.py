"""Folding of frozen BatchNorm into the preceding convolution.

:func:`fold_frozen_batchnorm`: inference only, BatchNorm becomes ``nn.Identity`` (``state_dict`` changes).
:func:`fuse_frozen_batchnorm_into_conv`: trainable, folds into the conv weight on each call, ``state_dict`` unchanged.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.ops.misc import FrozenBatchNorm2d


def _producer(children: dict[str, nn.Module], names: list[str], i: int, parent: nn.Module) -> nn.Conv2d | None:
    """The conv that feeds BatchNorm ``names[i]`` when the layout makes it certain (sibling ``convN`` / ``bnN``, or
    consecutive ``nn.Sequential`` entries), else None."""
    bn_name = names[i]
    m = re.match(r"^bn(\d*)$", bn_name)
    if m is not None:
        conv = children.get(f"conv{m.group(1)}")
        return conv if isinstance(conv, nn.Conv2d) else None
    if isinstance(parent, nn.Sequential) and i > 0 and isinstance(children[names[i - 1]], nn.Conv2d):
        return children[names[i - 1]]
    return None


@torch.no_grad()
def fold_frozen_batchnorm(module: nn.Module) -> int:
    """Fold every ``FrozenBatchNorm2d`` that directly follows a known conv into that conv, in place (module in eval
    mode; float32 arithmetic, convs keep their dtype). Returns the number folded (each replaced by ``nn.Identity``);
    uncertain ones are left alone."""
    folded = 0
    for parent in list(module.modules()):
        children = dict(parent.named_children())
        names = list(children)
        for i, name in enumerate(names):
            bn = children[name]
            if not isinstance(bn, FrozenBatchNorm2d):
                continue
            conv = _producer(children, names, i, parent)
            if isinstance(bn, _PassThroughBN) and isinstance(conv, ConvFrozenBN):
                conv.__class__ = nn.Conv2d  # the training-time fusion becomes a plain fold
                del conv.frozen_bn
            elif isinstance(bn, _PassThroughBN) or conv is None or conv.out_channels != bn.weight.numel():
                continue
            dtype = conv.weight.dtype
            w, b = fuse_conv_bn_weights(conv.weight.float(), None if conv.bias is None else conv.bias.float(),
                                        bn.running_mean.float(), bn.running_var.float(), bn.eps,
                                        bn.weight.float(), bn.bias.float())
            memory_format = torch.channels_last if conv.weight.is_contiguous(
                memory_format=torch.channels_last) and not conv.weight.is_contiguous() else torch.contiguous_format
            conv.weight = nn.Parameter(w.to(dtype).contiguous(memory_format=memory_format),
                                       requires_grad=False)
            conv.bias = nn.Parameter(b.to(dtype), requires_grad=False)
            setattr(parent, name, nn.Identity())
            folded += 1
    return folded


class _PassThroughBN(FrozenBatchNorm2d):
    """A frozen BatchNorm whose affine map its conv applies (:class:`ConvFrozenBN`); holds the buffers."""
    def forward(self, x: Tensor) -> Tensor:
        return x


class ConvFrozenBN(nn.Conv2d):
    """A conv followed by a frozen BatchNorm, computed as one conv with the BatchNorm folded into its weight on
    each call. ``frozen_bn`` is the (pass-through) BatchNorm module, kept where it was registered."""

    frozen_bn: FrozenBatchNorm2d

    def forward(self, x: Tensor) -> Tensor:
        bn = self.frozen_bn
        scale = bn.weight * (bn.running_var + bn.eps).rsqrt()  # (C_out,)
        shift = bn.bias - bn.running_mean * scale
        bias = shift if self.bias is None else self.bias * scale + shift
        return self._conv_forward(x, self.weight * scale.view(-1, 1, 1, 1), bias)


def fuse_frozen_batchnorm_into_conv(module: nn.Module) -> int:
    """Make every foldable conv + ``FrozenBatchNorm2d`` pair one conv that folds the BatchNorm into its weight on
    each call; in place, trainable, ``state_dict`` unchanged. Returns the number of pairs fused."""
    fused = 0
    for parent in list(module.modules()):
        children = dict(parent.named_children())
        names = list(children)
        for i, name in enumerate(names):
            bn = children[name]
            if type(bn) is not FrozenBatchNorm2d:
                continue
            conv = _producer(children, names, i, parent)
            if type(conv) is not nn.Conv2d or conv.out_channels != bn.weight.numel():
                continue
            bn.__class__ = _PassThroughBN
            conv.__class__ = ConvFrozenBN
            object.__setattr__(conv, "frozen_bn", bn)  # a reference, not a second registration in the state_dict
            fused += 1
    return fused
