"""Small pieces shared by DETR and its parts: the MLP box head, box logits and the focal prior."""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn

# Initial logit of sigmoid class heads: every class starts at probability 0.01 (RetinaNet's prior).
PRIOR_LOGIT = -math.log((1 - 0.01) / 0.01)


class MLP(nn.Module):
    """Linear layers with ReLU between them; ``layers.{i}`` names match DETR's ``bbox_embed``."""
    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else torch.relu(layer(x))
        return x


def zero_last_layer(head: MLP) -> None:
    """Zero the last layer of a box head, so that it starts by predicting no change to its anchors."""
    nn.init.zeros_(head.layers[-1].weight)
    nn.init.zeros_(head.layers[-1].bias)


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Boxes in [0, 1] -> logits, clamped away from 0 and 1 by ``eps``."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))
