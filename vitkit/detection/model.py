"""DETR: patch source -> ViTEncoder -> TransformerDecoder with object queries -> class and box heads.

Differences from facebookresearch/detr: batch-first tensors; the backbone is the encoder's patch source
(``BackbonePatchEmbed`` for the classic R50 recipe, conv ``PatchEmbed`` for ViT-DETR); one block class
serves pre- and post-norm. The convergence options are switches, all off for vanilla DETR:

- ``sigmoid_head``: C sigmoid logits (focal / varifocal losses) and no "no-object" slot;
- ``box_refine``: learned anchor boxes as queries (DAB-DETR): each layer's query position is an MLP of the
  sine embedding of the current boxes, and each layer refines them (Deformable DETR's iterative refinement,
  boxes detached between layers);
- ``num_queries_one2many``: extra queries trained with one-to-many matching (H-DETR's hybrid matching),
  kept from attending to the one-to-one queries and dropped at inference;
- ``two_stage`` (needs ``box_refine`` and ``sigmoid_head``): query selection from the encoder (Deformable
  DETR two-stage / RT-DETR): every patch token scores the classes and regresses a box around its grid anchor;
  the top-scoring tokens' boxes become the decoder's initial anchors and their (detached) features its
  content queries. Every token's proposal is supervised (``enc_outputs``; see ``SetCriterion.enc_one2many_k``);
- ``box_rpb`` (needs ``box_refine``): a box relative position bias on every cross-attention layer (Plain
  DETR's BoxRPB, :mod:`vitkit.detection.box_rpb`), computed from the layer's reference boxes;
- ``num_denoising`` (needs ``box_refine``): contrastive denoising queries built from the targets in training
  (DINO / RT-DETR, :mod:`vitkit.detection.denoising`), with known assignments (``dn_outputs``);
- ``multiscale``: a second memory grid at half the encoder's stride (:mod:`vitkit.core.pyramid`), with a
  learned level embedding on the memory positions (global cross-attention only); two-stage proposals, anchors
  (half the size) and BoxRPB cover both grids;
- ``coarse_level``: one more grid at twice the encoder's stride (anchors twice the size);
- ``cross_attn="deformable"`` (needs ``box_refine``): multi-scale deformable cross-attention
  (:mod:`vitkit.layers.deformable`) in place of global attention: each query samples a few points per head
  and level around its reference box. With ``multiscale`` and ``coarse_level`` this is the stride-8/16/32
  decoder of Deformable DETR and RT-DETR at a fraction of global attention's cost.
"""

from __future__ import annotations

import copy
import itertools
import math

import torch
from torch import Tensor, nn

from vitkit.core.decoder import TransformerDecoder
from vitkit.core.encoder import ViTEncoder
from vitkit.core.pyramid import CoarserLevel, FinerLevel
from vitkit.detection.box_rpb import BoxRPB, token_centres
from vitkit.detection.denoising import make_denoising_queries, query_attention_mask
from vitkit.layers import SinePositionEncoding2D
from vitkit.layers.deformable import MSDeformableAttention, valid_ratios


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


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def box_sine_embed(boxes: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """(B, Q, 4) cxcywh in [0, 1] -> (B, Q, dim) sine embedding, dim/4 channels per coordinate.

    Uses the same scale (2*pi) and frequencies as :class:`SinePositionEncoding2D`, in (y, x, w, h) order so the
    centre part lines up with the memory's (pos_y, pos_x) encoding.
    """
    n = dim // 4
    i = torch.arange(n, dtype=torch.float32, device=boxes.device)
    dim_t = temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / n)  # (n,)
    coords = boxes.float()[..., [1, 0, 2, 3]] * 2 * math.pi  # (B, Q, 4)
    pos = coords[..., None] / dim_t  # (B, Q, 4, n)
    pos = torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)  # (B, Q, 4, n)
    return pos.flatten(-2)  # (B, Q, 4n)


class DETR(nn.Module):
    """DETR-style set-prediction detector.

    Args:
        encoder: a :class:`ViTEncoder` (its patch source may be a CNN).
        decoder: a :class:`TransformerDecoder` with ``return_intermediate=True``.
        num_classes: number of object classes C (contiguous labels 0..C-1).
        num_queries: one-to-one object queries Q.
        sigmoid_head: C sigmoid logits (focal-style) instead of C+1 softmax logits with a no-object class.
        box_refine: anchor-box queries with per-layer iterative refinement.
        num_queries_one2many: extra one-to-many queries used in training only (0 = off).
        aux_loss: return the earlier layers' predictions as ``aux_outputs``.
        memory_pos: positions for the cross-attention keys: "auto" uses the encoder's per-layer positions when
            it has them (DETR) and a 2D sine encoding of the grid otherwise; "sine"; or "none". Deformable
            cross-attention reads none (its samples are placed by the reference boxes).
        two_stage: initial queries selected from encoder proposals (see the module docstring).
        anchor_size: width and height of the two-stage grid anchors, as a fraction of the image.
        box_rpb: box relative position bias in cross-attention.
        num_denoising: denoising query budget per batch in training (0 = off).
        dn_label_noise: label flip rate x 2 for denoising queries.
        dn_box_noise: box jitter scale for denoising queries.
        multiscale: add a memory grid at half the encoder's stride (fed by the conv stem when it has one).
        coarse_level: add a memory grid at twice the encoder's stride.
        cross_attn: "global" (attention over every memory token) or "deformable" (a few sampled points per
            head and level around each query's box; needs ``box_refine``).
        num_points: deformable sampling points per head and level.
    """
    def __init__(
        self,
        encoder: ViTEncoder,
        decoder: TransformerDecoder,
        num_classes: int,
        num_queries: int = 100,
        sigmoid_head: bool = False,
        box_refine: bool = False,
        num_queries_one2many: int = 0,
        aux_loss: bool = True,
        memory_pos: str = "auto",
        two_stage: bool = False,
        anchor_size: float = 0.1,
        box_rpb: bool = False,
        num_denoising: int = 0,
        dn_label_noise: float = 0.5,
        dn_box_noise: float = 1.0,
        multiscale: bool = False,
        coarse_level: bool = False,
        cross_attn: str = "global",
        num_points: int = 4,
    ) -> None:
        super().__init__()
        if memory_pos not in ("auto", "sine", "none"):
            raise ValueError(f"memory_pos must be auto|sine|none, got {memory_pos!r}")
        if two_stage and not (box_refine and sigmoid_head):
            raise ValueError("two_stage needs box_refine=True and sigmoid_head=True (proposals are scored per class "
                             "with sigmoid logits and refined by the decoder)")
        if box_rpb and not box_refine:
            raise ValueError("box_rpb needs box_refine=True (the bias is computed from each layer's reference boxes)")
        if num_denoising and not box_refine:
            raise ValueError("num_denoising needs box_refine=True (denoising queries are noised anchor boxes)")
        if cross_attn not in ("global", "deformable"):
            raise ValueError(f"cross_attn must be global|deformable, got {cross_attn!r}")
        if cross_attn == "deformable" and not box_refine:
            raise ValueError("cross_attn='deformable' needs box_refine=True (points are sampled around each "
                             "query's reference box)")
        if cross_attn == "deformable" and box_rpb:
            raise ValueError("box_rpb is a bias on global attention scores; it does not apply to "
                             "cross_attn='deformable' (set box_rpb: false)")
        if not decoder.return_intermediate:
            raise ValueError("DETR needs a TransformerDecoder with return_intermediate=True")
        D = decoder.dim
        self.encoder, self.decoder = encoder, decoder
        self.num_classes, self.num_queries = num_classes, num_queries
        self.num_queries_one2many = num_queries_one2many
        self.sigmoid_head, self.box_refine, self.aux_loss = sigmoid_head, box_refine, aux_loss
        self.memory_pos = memory_pos
        self.two_stage, self.anchor_size = two_stage, anchor_size
        self.num_denoising, self.dn_label_noise, self.dn_box_noise = num_denoising, dn_label_noise, dn_box_noise
        self.input_proj = nn.Linear(encoder.embed_dim, D) if encoder.embed_dim != D else nn.Identity()
        self.finer = None
        if multiscale:
            pe = encoder.patch_embed
            lateral = getattr(pe, "stem_strides", {}).get(getattr(pe, "stride", 0) // 2)
            self.finer = FinerLevel(D, lateral)
        self.coarser = CoarserLevel(D) if coarse_level else None
        self.deformable = cross_attn == "deformable"
        # The level embedding is added to the memory positions, which only global cross-attention reads (deformable
        # attention locates its samples from the reference boxes): no unused parameter for DDP to wait on.
        self.level_embed = None
        if (multiscale or coarse_level) and not self.deformable and memory_pos != "none":
            self.level_embed = nn.Parameter(torch.zeros(1 + multiscale + coarse_level, D))
        if self.deformable:
            for layer in decoder.layers:  # same place and name as the global module (Deformable DETR's keys)
                layer.cross_attn = MSDeformableAttention(D, decoder.num_heads, 1 + multiscale + coarse_level,
                                                         num_points)
        self.pos_sine = SinePositionEncoding2D(D)
        total_q = num_queries + num_queries_one2many
        self.query_embed = None if two_stage else nn.Embedding(total_q, D)
        self.class_embed = nn.Linear(D, num_classes if sigmoid_head else num_classes + 1)
        self.bbox_embed = MLP(D, D, 4, 3)
        if two_stage:
            self.enc_output = nn.Sequential(nn.Linear(D, D), nn.LayerNorm(D))
            self.enc_score_head = nn.Linear(D, num_classes)
            self.enc_bbox_head = MLP(D, D, 4, 3)
        self.box_rpb = nn.ModuleList(BoxRPB(decoder.num_heads, D) for _ in range(decoder.depth)) if box_rpb else None
        if num_denoising:
            self.dn_label_embed = nn.Embedding(num_classes + 1, D)  # last row: padding entries
        if box_refine:
            self.refpoint_embed = None if two_stage else nn.Embedding(total_q, 4)
            self.ref_point_head = MLP(D, D, D, 2)
            # Deformable DETR: one box head per layer when refining.
            self.bbox_embed = nn.ModuleList(copy.deepcopy(self.bbox_embed) for _ in range(decoder.depth))
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        prior = -math.log((1 - 0.01) / 0.01)
        if self.sigmoid_head:
            nn.init.constant_(self.class_embed.bias, prior)
        if self.two_stage:
            nn.init.constant_(self.enc_score_head.bias, prior)
            nn.init.zeros_(self.enc_bbox_head.layers[-1].weight)
            nn.init.zeros_(self.enc_bbox_head.layers[-1].bias)
        if self.box_refine:
            for head in self.bbox_embed:
                nn.init.zeros_(head.layers[-1].weight)
                nn.init.zeros_(head.layers[-1].bias)
        if getattr(self, "refpoint_embed", None) is not None:
            with torch.no_grad():
                # Anchors: centres spread uniformly over the image, sizes ~0.1 (stored in logit space).
                self.refpoint_embed.weight[:, :2].uniform_(0, 1)
                self.refpoint_embed.weight[:, 2:].fill_(0.1)
                self.refpoint_embed.weight.copy_(inverse_sigmoid(self.refpoint_embed.weight))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        # Checkpoints written before deformable / position-free models stopped creating ``level_embed`` hold one
        # (zeros, never trained: nothing read it); drop it so they still load strictly.
        if self.level_embed is None:
            state_dict.pop(prefix + "level_embed", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _memory_pos(self, enc, mask: Tensor) -> Tensor | None:
        if self.memory_pos == "none" or self.deformable:  # deformable cross-attention reads no memory positions
            return None
        if self.memory_pos == "auto" and enc.pos is not None and enc.pos.shape[-1] == self.decoder.dim:
            return enc.pos
        B = mask.shape[0]
        h, w = enc.grid
        grid_mask = mask[:, enc.num_prefix:].reshape(B, h, w)  # (B, h, w)
        pos = self.pos_sine(grid_mask, dtype=enc.tokens.dtype).reshape(B, h * w, -1)  # (B, h*w, D)
        if enc.num_prefix:
            pos = torch.cat((pos.new_zeros(B, enc.num_prefix, pos.shape[-1]), pos), dim=1)  # (B, P+h*w, D)
        return pos

    def forward(self, images: Tensor, mask: Tensor | None = None, targets: list[dict] | None = None) -> dict:
        """Detect.

        Args:
            images: (B, 3, H, W) normalised images, zero-padded.
            mask: optional (B, H, W) bool pixel padding mask, True = padding.
            targets: training targets (``labels``, normalised cxcywh ``boxes``), used only to build denoising
                queries in training; predictions of the matching queries do not depend on them.

        Returns:
            dict with
            - ``pred_logits``: (B, Q, C+1) softmax logits (last = no object), or (B, Q, C) for sigmoid heads;
            - ``pred_boxes``: (B, Q, 4) normalised cxcywh in [0, 1], relative to the unpadded image;
            - ``aux_outputs``: list of L-1 dicts with the same keys for the earlier decoder layers;
            - ``one2many`` (training with one-to-many queries): the same structure for the extra queries;
            - ``enc_outputs`` (two-stage): every patch token's proposal, ``pred_logits`` (B, N, C) (padding tokens
              at -1e4) and ``pred_boxes`` (B, N, 4);
            - ``dn_outputs`` (training with denoising): the denoising queries' outputs (with ``aux_outputs``) and
              ``dn_meta``, a :class:`DenoisingMeta`.
        """
        enc = self.encoder(images, mask, return_stem=self.finer is not None and self.finer.lateral is not None)
        memory = self.input_proj(enc.tokens)  # (B, P+N, D)
        mem_pad = enc.mask  # (B, P+N)
        mem_pos = self._memory_pos(enc, enc.mask)
        levels = [(enc.grid, self.anchor_size)]  # per memory grid after the prefix: (h, w), anchor size
        if self.finer is not None or self.coarser is not None:
            memory, mem_pad, mem_pos = self._add_levels(enc, memory, mem_pad, mem_pos, levels)
        mem_mask = mem_pad if mem_pad.any() else None  # (B, P+N)
        B = memory.shape[0]
        total_q = self.num_queries + (self.num_queries_one2many if self.training else 0)
        enc_out = None
        centres = None  # per level: token centres (B, w), (B, h) relative to the unpadded image
        if self.two_stage or self.box_rpb is not None:
            centres, start = [], enc.num_prefix
            for (h, w), _ in levels:
                centres.append(token_centres(mem_pad[:, start:start + h * w], (h, w)))
                start += h * w
        if self.two_stage:
            query, ref, enc_out = self._select_queries(memory[:, enc.num_prefix:], mem_pad[:, enc.num_prefix:],
                                                       levels, centres, total_q)
        else:
            query = self.query_embed.weight[:total_q].unsqueeze(0).expand(B, -1, -1).to(memory.dtype)  # (B, Qt, D)
            ref = self.refpoint_embed.weight[:total_q].sigmoid().unsqueeze(0).expand(B, -1, -1) \
                if self.box_refine else None  # (B, Qt, 4)
        dn = None
        if self.training and self.num_denoising and targets is not None:
            dn = make_denoising_queries(targets, self.dn_label_embed, self.num_classes, self.num_denoising,
                                        self.dn_label_noise, self.dn_box_noise)
        n_dn = dn[2].num_queries if dn is not None else 0
        attn_mask = query_attention_mask(n_dn, dn[2].num_groups if dn else 1, self.num_queries,
                                         total_q - self.num_queries, memory.device)
        if dn is not None:
            query = torch.cat((dn[0].to(query.dtype), query), dim=1)  # (B, Ndn + Qt, D)
            ref = torch.cat((dn[1].to(ref.dtype), ref), dim=1)  # (B, Ndn + Qt, 4)
        if self.box_refine:
            if self.deformable:  # sampling context: the grids after the prefix tokens
                P = enc.num_prefix
                shapes = [hw for hw, _ in levels]
                ctx = {"shapes": shapes, "ratios": valid_ratios(mem_pad[:, P:], shapes)}
                logits, boxes = self._decode_refine(query, ref, memory[:, P:], None, mem_pad[:, P:], attn_mask, 0,
                                                    None, ctx)
            else:
                logits, boxes = self._decode_refine(query, ref, memory, mem_pos, mem_mask, attn_mask,
                                                    enc.num_prefix, centres)
        else:
            hs = self.decoder(torch.zeros_like(query), memory, query_pos=query, memory_pos=mem_pos,
                              memory_key_padding_mask=mem_mask, self_attn_mask=attn_mask)  # (L, B, Qt, D)
            logits, boxes = self.class_embed(hs), self.bbox_embed(hs).sigmoid()  # (L, B, Qt, C'), (L, B, Qt, 4)
        dn_logits, dn_boxes = logits[:, :, :n_dn], boxes[:, :, :n_dn]  # (L, B, Ndn, .)
        logits, boxes = logits[:, :, n_dn:], boxes[:, :, n_dn:]  # (L, B, Qt, .)
        out = self._pack(logits[:, :, : self.num_queries], boxes[:, :, : self.num_queries])
        if enc_out is not None:
            out["enc_outputs"] = enc_out
        if total_q > self.num_queries:
            out["one2many"] = self._pack(logits[:, :, self.num_queries:], boxes[:, :, self.num_queries:])
        if dn is not None:
            out["dn_outputs"] = {**self._pack(dn_logits, dn_boxes), "dn_meta": dn[2]}
        return out

    def _add_levels(self, enc, memory: Tensor, mem_pad: Tensor, mem_pos: Tensor | None,
                    levels: list) -> tuple[Tensor, Tensor, Tensor | None]:
        """Append the finer (half-stride) and coarser (double-stride) grids to the memory, after the encoder's
        grid, each with its sine positions plus a level embedding; extend ``levels`` in place."""
        P, (h, w) = enc.num_prefix, enc.grid
        B, _, D = memory.shape
        grid, grid_pad = memory[:, P:].reshape(B, h, w, D), mem_pad[:, P:].reshape(B, h, w)  # (B, h, w, D)
        extra = []  # (tokens (B, h', w', D), padding (B, h', w'), anchor size)
        if self.finer is not None:
            stride = getattr(self.encoder.patch_embed, "stride", 0)
            fine, fine_pad = self.finer(grid, grid_pad, enc.stem.get(stride // 2))
            extra.append((fine, fine_pad, self.anchor_size / 2))
        if self.coarser is not None:
            extra.append((*self.coarser(grid, grid_pad), self.anchor_size * 2))
        mems, pads, poss = [memory], [mem_pad], []
        if mem_pos is not None:
            poss = [mem_pos[:, :P], mem_pos[:, P:] + self.level_embed[0].to(mem_pos.dtype)]
        for lvl, (tok, pad, size) in enumerate(extra, start=1):
            h2, w2 = tok.shape[1:3]
            levels.append(((h2, w2), size))
            mems.append(tok.reshape(B, h2 * w2, D).to(memory.dtype))
            pads.append(pad.reshape(B, h2 * w2))
            if mem_pos is not None:
                pos = self.pos_sine(pad, dtype=mem_pos.dtype).reshape(B, h2 * w2, D) + self.level_embed[lvl]
                poss.append(pos.to(mem_pos.dtype))
        memory, mem_pad = torch.cat(mems, dim=1), torch.cat(pads, dim=1)  # (B, P+N_all, D), (B, P+N_all)
        return memory, mem_pad, (torch.cat(poss, dim=1) if mem_pos is not None else None)

    def _select_queries(self, tokens: Tensor, pad: Tensor, levels: list, centres: list,
                        total_q: int) -> tuple[Tensor, Tensor, dict]:
        """Two-stage query selection from the grid tokens (B, N, D) with padding mask (B, N), all levels.

        Returns content queries (B, Qt, D) and anchors (B, Qt, 4) in [0, 1], both detached, and every token's
        proposal as an output dict (``pred_logits`` (B, N, C) with padding tokens at -1e4, ``pred_boxes`` (B, N, 4)):
        the loss supervises all proposals (Deformable DETR's two-stage), not only the selected ones.
        """
        anchors = []
        for ((h, w), size), (cx, cy) in zip(levels, centres, strict=True):  # cx (B, w), cy (B, h)
            cx, cy = cx[:, None, :].expand(-1, h, -1).flatten(1), cy[:, :, None].expand(-1, -1, w).flatten(1)
            wh = torch.full_like(cx, size)  # (B, h*w)
            anchors.append(torch.stack((cx, cy, wh, wh), dim=-1))  # (B, h*w, 4)
        anchors = inverse_sigmoid(torch.cat(anchors, dim=1))  # (B, N, 4) logit space
        feats = self.enc_output(tokens.masked_fill(pad[..., None], 0))  # (B, N, D)
        logits = self.enc_score_head(feats)  # (B, N, C)
        boxes = (self.enc_bbox_head(feats).float() + anchors).sigmoid()  # (B, N, 4)
        score = logits.detach().amax(-1).float().masked_fill(pad, float("-inf"))  # (B, N)
        k = min(total_q, score.shape[1])
        idx = score.topk(k, dim=1).indices  # (B, k)
        if k < total_q:  # fewer tokens than queries: repeat the best ones (tiny images only)
            idx = idx[:, torch.arange(total_q, device=idx.device) % k]
        sel_boxes = boxes.gather(1, idx[..., None].expand(-1, -1, 4))  # (B, Qt, 4)
        query = feats.gather(1, idx[..., None].expand(-1, -1, feats.shape[-1])).detach()  # (B, Qt, D)
        enc_out = {"pred_logits": logits.float().masked_fill(pad[..., None], -1e4), "pred_boxes": boxes}
        return query, sel_boxes.detach(), enc_out

    def _decode_refine(self, query: Tensor, ref: Tensor, memory: Tensor, mem_pos: Tensor | None,
                       mem_mask: Tensor | None, attn_mask: Tensor | None, num_prefix: int,
                       centres: list[tuple[Tensor, Tensor]] | None,
                       deform_ctx: dict | None = None) -> tuple[Tensor, Tensor]:
        """Layer-by-layer decoding from anchors ref (B, Qt, 4) -> logits (L, B, Qt, C'), boxes (L, B, Qt, 4).

        ``deform_ctx`` (deformable cross-attention): level ``shapes`` and valid ``ratios``; each layer samples
        around its current reference boxes.
        """
        x = query  # content queries: learned, or the selected encoder features
        logits, boxes = [], []
        for i, (layer, head) in enumerate(zip(self.decoder.layers, self.bbox_embed, strict=True)):
            query_pos = self.ref_point_head(box_sine_embed(ref, self.decoder.dim).to(memory.dtype))  # (B, Qt, D)
            bias = None
            if self.box_rpb is not None:
                bias = torch.cat([self.box_rpb[i](ref, cx, cy) for cx, cy in centres], dim=-1)  # (B, H, Qt, N)
                if num_prefix:  # prefix tokens get no positional bias
                    bias = torch.cat((bias.new_zeros(*bias.shape[:3], num_prefix), bias), dim=-1)
            kw = None if deform_ctx is None else {**deform_ctx, "reference": ref}
            x = layer(x, memory, query_pos=query_pos, memory_pos=mem_pos, memory_key_padding_mask=mem_mask,
                      self_attn_mask=attn_mask, cross_attn_bias=bias, cross_attn_kwargs=kw)
            h = self.decoder.norm(x)
            new = (inverse_sigmoid(ref) + head(h).float()).sigmoid()  # (B, Qt, 4)
            logits.append(self.class_embed(h))
            boxes.append(new)
            ref = new.detach()
        return torch.stack(logits), torch.stack(boxes)

    def _pack(self, logits: Tensor, boxes: Tensor) -> dict:
        out = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b}
                                  for a, b in zip(logits[:-1], boxes[:-1], strict=True)]
        return out
