"""timm's ``Mlp`` (same parameter names) with a fused CPU inference path: ``fc1`` and its activation run as one
oneDNN kernel. Training, autograd, other devices/activations, tracing and export take timm's path unchanged."""

from __future__ import annotations

import torch
from timm.layers import Mlp as TimmMlp
from torch import Tensor, nn

from vitkit.kernels import packed


def _pointwise(act: nn.Module) -> tuple[str, str] | None:
    """oneDNN's (attr, algorithm) for an activation module, or None when it has no fused form here."""
    if type(act) is nn.GELU:
        return "gelu", act.approximate  # "none" (erf) or "tanh"
    if type(act) is nn.ReLU:
        return "relu", ""
    return None


class Mlp(TimmMlp):
    """timm's ``Mlp`` (fc1 -> act -> drop -> norm -> fc2 -> drop); same arguments and parameter names."""
    def forward(self, x: Tensor) -> Tensor:
        """(..., in_features) -> (..., out_features)."""
        fused = _pointwise(self.act)
        if (fused is None or torch.is_grad_enabled() or x.device.type != "cpu" or not isinstance(self.fc1, nn.Linear)
                or x.dtype != self.fc1.weight.dtype or not packed.packing_available(x.dtype)
                or packed.standard_ops_only()):
            return super().forward(x)
        shape = x.shape
        h = packed.linear_act(self.fc1, x.reshape(-1, shape[-1]), *fused)  # (M, hidden)
        h = self.fc2(self.norm(self.drop1(h)))  # (M, out)
        return self.drop2(h).reshape(*shape[:-1], h.shape[-1])
