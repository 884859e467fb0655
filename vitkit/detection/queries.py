"""Sources of DETR's decoder queries, each a :class:`Queries`: :class:`LearnedQueries` (+ :class:`LearnedAnchors`),
:class:`TwoStageSelection` and :class:`DenoisingSource`. Each part's ``check`` validates its switch; modules keep
the state-dict names of official DETR weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vitkit.detection.denoising import DenoisingQueries, make_denoising_queries
from vitkit.detection.heads import MLP, PRIOR_LOGIT, inverse_sigmoid, zero_last_layer


@dataclass
class Queries:
    """The decoder's inputs for one batch of queries.

    Attributes:
        content: (B, Q, D) initial decoder states.
        pos: (B, Q, D) query positions added in every layer, or None when a refinement hook derives them.
        boxes: (B, Q, 4) anchor boxes cxcywh in [0, 1], or None without box refinement.
    """
    content: Tensor
    pos: Tensor | None = None
    boxes: Tensor | None = None

    def with_denoising(self, dn: DenoisingQueries) -> Queries:
        """[denoising | these] queries: (B, N + Q, D) content and (B, N + Q, 4) anchors."""
        if self.boxes is None or self.pos is not None:
            raise ValueError("denoising queries need anchor-box queries (box refinement)")
        content = torch.cat((dn.content.to(self.content.dtype), self.content), dim=1)  # (B, N + Q, D)
        boxes = torch.cat((dn.boxes.to(self.boxes.dtype), self.boxes), dim=1)  # (B, N + Q, 4)
        return Queries(content, None, boxes)


def token_centres(pad: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Token centres relative to each image's unpadded extent: cx (B, w) and cy (B, h), in [0, 1] over real
    tokens (> 1 over padding), for a (B, h*w) right/bottom padding mask (True = padding) and ``grid`` (h, w)."""
    h, w = grid
    grid_pad = pad.reshape(-1, h, w)  # (B, h, w)
    valid_h = (~grid_pad[:, :, 0]).sum(1).clamp(min=1).float()  # (B,) real token rows
    valid_w = (~grid_pad[:, 0, :]).sum(1).clamp(min=1).float()  # (B,) real token columns
    cx = (torch.arange(w, device=pad.device) + 0.5) / valid_w[:, None]  # (B, w)
    cy = (torch.arange(h, device=pad.device) + 0.5) / valid_h[:, None]  # (B, h)
    return cx, cy


class LearnedAnchors(nn.Module):
    """One learned anchor box per query, stored as logits in ``refpoint_embed`` (Q, 4); Q counts one-to-one and
    one-to-many queries."""
    def __init__(self, num_queries: int) -> None:
        super().__init__()
        self.refpoint_embed = nn.Embedding(num_queries, 4)

    def reset_parameters(self) -> None:
        """Centres spread uniformly over the image, sizes 0.1 (stored in logit space)."""
        with torch.no_grad():
            self.refpoint_embed.weight[:, :2].uniform_(0, 1)
            self.refpoint_embed.weight[:, 2:].fill_(0.1)
            self.refpoint_embed.weight.copy_(inverse_sigmoid(self.refpoint_embed.weight))

    def forward(self, batch: int, count: int) -> Tensor:
        """The first ``count`` anchors -> (batch, count, 4) cxcywh in [0, 1]."""
        return self.refpoint_embed.weight[:count].sigmoid().unsqueeze(0).expand(batch, -1, -1)  # (B, Qt, 4)


class LearnedQueries(nn.Module):
    """DETR's learned object queries, ``query_embed`` (Q, D), Q counting one-to-one and one-to-many queries.

    Without anchors they are query positions over zero initial states; with :class:`LearnedAnchors` they are
    the content queries.
    """
    def __init__(self, num_queries: int, dim: int) -> None:
        super().__init__()
        self.query_embed = nn.Embedding(num_queries, dim)

    def forward(self, batch: int, count: int, dtype: torch.dtype, anchors: LearnedAnchors | None = None) -> Queries:
        """The first ``count`` queries for a batch of ``batch`` images, in ``dtype``."""
        query = self.query_embed.weight[:count].unsqueeze(0).expand(batch, -1, -1).to(dtype)  # (B, Qt, D)
        if anchors is None:
            return Queries(torch.zeros_like(query), query)
        return Queries(query, None, anchors(batch, count))


class TwoStageSelection(nn.Module):
    """Two-stage query selection: every grid token scores C classes (sigmoid) and regresses a box around its
    anchor; the top tokens' boxes become anchors and their detached features content queries."""
    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.enc_output = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim))
        self.enc_score_head = nn.Linear(dim, num_classes)
        self.enc_bbox_head = MLP(dim, dim, 4, 3)

    @staticmethod
    def check(box_refine: bool, sigmoid_head: bool) -> None:
        """Raise ValueError unless the model refines boxes with a sigmoid class head."""
        if not (box_refine and sigmoid_head):
            raise ValueError("two_stage needs box_refine=True and sigmoid_head=True (proposals are scored per class "
                             "with sigmoid logits and refined by the decoder)")

    def reset_parameters(self) -> None:
        """Prior class logits and a zero box head: proposals start at their grid anchors."""
        nn.init.constant_(self.enc_score_head.bias, PRIOR_LOGIT)
        zero_last_layer(self.enc_bbox_head)

    def forward(self, tokens: Tensor, pad: Tensor, levels: list, count: int) -> tuple[Queries, dict[str, Tensor]]:
        """Select ``count`` queries from the grid tokens of every level.

        Args:
            tokens: (B, N, D) grid tokens of all levels (no prefix tokens), each level row-major.
            pad: (B, N) True = padding (on the right/bottom of each level's grid).
            levels: per level ((h, w), anchor size as a fraction of the image), in memory order.

        Returns:
            :class:`Queries` with detached content (B, Qt, D) and anchors (B, Qt, 4) in [0, 1], and every token's
            proposal: ``pred_logits`` (B, N, C) with padding tokens at -1e4, ``pred_boxes`` (B, N, 4).
        """
        anchors, start = [], 0
        for (h, w), size in levels:
            cx, cy = token_centres(pad[:, start:start + h * w], (h, w))  # (B, w), (B, h)
            start += h * w
            cx, cy = cx[:, None, :].expand(-1, h, -1).flatten(1), cy[:, :, None].expand(-1, -1, w).flatten(1)
            wh = torch.full_like(cx, size)  # (B, h*w)
            anchors.append(torch.stack((cx, cy, wh, wh), dim=-1))  # (B, h*w, 4)
        anchors = inverse_sigmoid(torch.cat(anchors, dim=1))  # (B, N, 4) logit space
        feats = self.enc_output(tokens.masked_fill(pad[..., None], 0))  # (B, N, D)
        logits = self.enc_score_head(feats)  # (B, N, C)
        boxes = (self.enc_bbox_head(feats).float() + anchors).sigmoid()  # (B, N, 4)
        score = logits.detach().amax(-1).float().masked_fill(pad, float("-inf"))  # (B, N)
        k = min(count, score.shape[1])
        idx = score.topk(k, dim=1).indices  # (B, k)
        if k < count:  # fewer tokens than queries: repeat the best ones (tiny images only)
            idx = idx[:, torch.arange(count, device=idx.device) % k]
        sel_boxes = boxes.gather(1, idx[..., None].expand(-1, -1, 4))  # (B, Qt, 4)
        query = feats.gather(1, idx[..., None].expand(-1, -1, feats.shape[-1])).detach()  # (B, Qt, D)
        proposals = {"pred_logits": logits.float().masked_fill(pad[..., None], -1e4), "pred_boxes": boxes}
        return Queries(query, None, sel_boxes.detach()), proposals


class DenoisingSource(nn.Module):
    """Contrastive denoising queries from the training targets, ``dn_label_embed`` (C + 1, D); row C is the
    padding entry. ``label_noise`` is the label flip rate x 2, ``box_noise`` the box jitter scale."""
    def __init__(self, num_classes: int, dim: int, num_denoising: int, label_noise: float = 0.5,
                 box_noise: float = 1.0) -> None:
        super().__init__()
        self.num_classes, self.num_denoising = num_classes, num_denoising
        self.label_noise, self.box_noise = label_noise, box_noise
        self.dn_label_embed = nn.Embedding(num_classes + 1, dim)  # last row: padding entries

    @staticmethod
    def check(box_refine: bool) -> None:
        """Raise ValueError unless the model refines anchor boxes (denoising queries are noised anchors)."""
        if not box_refine:
            raise ValueError("num_denoising needs box_refine=True (denoising queries are noised anchor boxes)")

    def forward(self, targets: list[dict]) -> DenoisingQueries | None:
        """Noised queries from B targets (``labels`` (n,), ``boxes`` (n, 4)); None when no image has a target."""
        return make_denoising_queries(targets, self.dn_label_embed, self.num_classes, self.num_denoising,
                                      self.label_noise, self.box_noise)
