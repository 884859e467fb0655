"""Box relative position bias (BoxRPB, Plain DETR): a locality prior for global cross-attention.

For every (query box, memory token) pair the bias is an MLP of the token centre's offsets from the box's left and
right edges plus an MLP of its offsets from the top and bottom edges, one value per head. Decomposing by axis
keeps the cost at Q x (h + w) MLP evaluations. Offsets are in image-relative units, log-scaled. Decoders learn
to look inside and around their boxes from the first steps instead of discovering it through global attention,
which is what makes a single-scale plain-ViT DETR converge quickly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vitkit.detection.box_ops import cxcywh_to_xyxy


def token_centres(pad: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Token centres relative to each image's unpadded extent.

    Args:
        pad: (B, h*w) token padding mask (True = padding), padding on the right/bottom.
        grid: (h, w).

    Returns:
        cx (B, w) and cy (B, h) in [0, 1] over real tokens (> 1 over padding columns/rows).
    """
    h, w = grid
    grid_pad = pad.reshape(-1, h, w)
    valid_h = (~grid_pad[:, :, 0]).sum(1).clamp(min=1).float()  # (B,) real token rows
    valid_w = (~grid_pad[:, 0, :]).sum(1).clamp(min=1).float()  # (B,) real token columns
    cx = (torch.arange(w, device=pad.device) + 0.5) / valid_w[:, None]  # (B, w)
    cy = (torch.arange(h, device=pad.device) + 0.5) / valid_h[:, None]  # (B, h)
    return cx, cy


class BoxRPB(nn.Module):
    """Decomposed box-to-token position bias for one cross-attention layer.

    Args:
        num_heads: attention heads (one bias per head).
        hidden: MLP width.
        scale: offsets are multiplied by this before the log scaling (``sign(d) log2(1 + scale |d|) / log2(scale)``).
    """
    def __init__(self, num_heads: int, hidden: int = 256, scale: float = 8.0) -> None:
        super().__init__()
        self.scale = scale
        self.mlp_x, self.mlp_y = (
            nn.Sequential(nn.Linear(2, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_heads, bias=False))
            for _ in range(2)
        )

    def _log(self, d: Tensor) -> Tensor:
        return torch.sign(d) * torch.log2(d.abs() * self.scale + 1) / torch.log2(torch.tensor(self.scale))

    def forward(self, boxes: Tensor, cx: Tensor, cy: Tensor) -> Tensor:
        """(B, Q, 4) cxcywh boxes, token centres cx (B, w), cy (B, h) -> (B, heads, Q, h*w) additive bias."""
        xyxy = cxcywh_to_xyxy(boxes.float())  # (B, Q, 4)
        dx = cx[:, None, :, None] - xyxy[:, :, None, 0::2]  # (B, Q, w, 2): offsets from x1, x2
        dy = cy[:, None, :, None] - xyxy[:, :, None, 1::2]  # (B, Q, h, 2): offsets from y1, y2
        bx = self.mlp_x(self._log(dx))  # (B, Q, w, heads)
        by = self.mlp_y(self._log(dy))  # (B, Q, h, heads)
        bias = by[:, :, :, None, :] + bx[:, :, None, :, :]  # (B, Q, h, w, heads)
        return bias.flatten(2, 3).permute(0, 3, 1, 2)  # (B, heads, Q, h*w)


def check_box_rpb(box_refine: bool, cross_attn: str) -> None:
    """The rules of the ``box_rpb`` switch: it needs reference boxes and global cross-attention (ValueError)."""
    if not box_refine:
        raise ValueError("box_rpb needs box_refine=True (the bias is computed from each layer's reference boxes)")
    if cross_attn == "deformable":
        raise ValueError("box_rpb is a bias on global attention scores; it does not apply to "
                         "cross_attn='deformable' (set box_rpb: false)")


def memory_bias(rpb: BoxRPB, boxes: Tensor, centres: list[tuple[Tensor, Tensor]], num_prefix: int) -> Tensor:
    """One layer's bias over the whole memory: (B, Q, 4) boxes -> (B, heads, Q, P + N).

    Args:
        rpb: the layer's :class:`BoxRPB`.
        boxes: (B, Q, 4) the layer's reference boxes, cxcywh.
        centres: per memory grid, token centres cx (B, w) and cy (B, h) (:func:`token_centres`).
        num_prefix: P prefix tokens before the grids (class / register tokens), which get no bias.
    """
    bias = torch.cat([rpb(boxes, cx, cy) for cx, cy in centres], dim=-1)  # (B, H, Q, N)
    if num_prefix:  # prefix tokens get no positional bias
        bias = torch.cat((bias.new_zeros(*bias.shape[:3], num_prefix), bias), dim=-1)  # (B, H, Q, P + N)
    return bias
