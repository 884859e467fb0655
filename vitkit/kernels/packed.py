"""Prepacked oneDNN linear weights for CPU inference (bf16 and fp32).

:func:`pack_linears` keeps oneDNN's blocked copy next to each ``nn.Linear``; :func:`linear` uses it only while
current (no autograd, CPU bf16/fp32 input of the weight's dtype, not tracing/exporting/compiling, weight unchanged
since packing). bf16 output is bit-identical to ``F.linear``; fp32 differs by float rounding (~1e-6 relative).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_PACKS = "_vitkit_packs"  # attribute on an nn.Linear: {(start, stop): ((data_ptr, version), packed weight, bias)}


class _Packs(dict):
    """The packed copies of one layer; a copied or pickled layer starts with an empty cache."""

    def __deepcopy__(self, memo: dict) -> _Packs:
        return _Packs()

    def __reduce__(self):
        return _Packs, ()


@functools.cache
def packing_available(dtype: torch.dtype = torch.float32) -> bool:
    """True where oneDNN can pack linear weights of ``dtype`` (fp32 or bf16) on this CPU."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return dtype == torch.float32


def pack_linears(model: nn.Module) -> int:
    """Mark every ``nn.Linear`` of ``model`` for packed CPU inference; returns how many were marked.

    Plain ``nn.Linear`` modules become :class:`PackedLinear` (same parameters and ``state_dict``); subclasses keep
    their class. Packing is lazy, on each weight's first eligible call.
    """
    if not packing_available():
        return 0
    n = 0
    for m in model.modules():
        if isinstance(m, nn.Linear):
            if type(m) is nn.Linear:
                m.__class__ = PackedLinear
            setattr(m, _PACKS, _Packs())
            n += 1
    return n


def unpack_linears(model: nn.Module) -> None:
    """Drop the packed copies (and the marks) that :func:`pack_linears` made."""
    for m in model.modules():
        if hasattr(m, _PACKS):
            delattr(m, _PACKS)
        if type(m) is PackedLinear:
            m.__class__ = nn.Linear


def standard_ops_only() -> bool:
    """True while tracing, exporting or compiling, when the CPU inference kernels must use standard ops."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def _eligible(x: Tensor, weight: Tensor) -> bool:
    return (x.dtype == weight.dtype and packing_available(x.dtype) and x.device.type == "cpu"
            and not torch.is_grad_enabled() and not standard_ops_only())


def _packed(module: nn.Linear, x: Tensor, start: int | None, stop: int | None) -> tuple[Tensor, Tensor | None] | None:
    """(packed weight, bias) for rows start:stop of ``module``'s weight, packing it now if needed; else None."""
    packs = getattr(module, _PACKS, None)
    if packs is None or not _eligible(x, module.weight):
        return None
    w = module.weight
    version = (w.data_ptr(), w._version)
    entry = packs.get((start, stop))
    if entry is None or entry[0] != version:
        rows = w[start:stop]
        b = module.bias[start:stop] if module.bias is not None else None
        entry = (version, torch.ops.mkldnn._reorder_linear_weight(rows.contiguous(), None), b)
        packs[(start, stop)] = entry
    return entry[1], entry[2]


def linear(module: nn.Linear, x: Tensor, start: int | None = None, stop: int | None = None) -> Tensor:
    """``F.linear(x, module.weight[start:stop], module.bias[start:stop])``, from the packed copy when current.

    x is (..., in_features); returns (..., stop - start) (all out_features when ``start``/``stop`` are None).
    """
    packed = _packed(module, x, start, stop)
    if packed is None:
        w, b = module.weight, module.bias
        if start is not None or stop is not None:
            w, b = w[start:stop], None if b is None else b[start:stop]
        return F.linear(x, w, b)
    shape = x.shape
    out = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, shape[-1]), packed[0], packed[1], "none", [], "")
    return out.reshape(*shape[:-1], out.shape[-1])


def linear_act(module: nn.Linear, x: Tensor, act: str, algo: str) -> Tensor:
    """oneDNN linear + activation (``act`` "gelu"/"relu", ``algo`` its variant): (M, in) -> (M, out), from the
    packed weight when current, else from the dense one. The caller checks that the fused kernel runs here."""
    packed = _packed(module, x, None, None)
    if packed is not None:
        return torch.ops.mkldnn._linear_pointwise(x, packed[0], packed[1], act, [], algo)
    return torch.ops.mkldnn._linear_pointwise(x, module.weight, module.bias, act, [], algo)


class PackedLinear(nn.Linear):
    """``nn.Linear`` whose forward goes through :func:`linear` (same parameters, same ``state_dict``)."""
    def forward(self, x: Tensor) -> Tensor:
        return linear(self, x)
