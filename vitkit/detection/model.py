"""DETR: patch source -> ViTEncoder -> TransformerDecoder with object queries -> class and box heads.

Differences from facebookresearch/detr: batch-first tensors; the backbone is the encoder's patch source; one block
class for pre- and post-norm; optional switches (all off = vanilla DETR): ``sigmoid_head``, ``box_refine``,
``num_queries_one2many``, ``two_stage``, ``num_denoising``, ``multiscale``, ``coarse_level``, ``cross_attn``.
Parts' modules are registered under the state-dict names of official DETR weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vitkit.core.decoder import TransformerDecoder
from vitkit.core.encoder import ViTEncoder
from vitkit.core.pyramid import CoarserLevel, FinerLevel
from vitkit.detection.denoising import DenoisingQueries, query_attention_mask
from vitkit.detection.heads import MLP, PRIOR_LOGIT
from vitkit.detection.queries import DenoisingSource, LearnedAnchors, LearnedQueries, Queries, TwoStageSelection
from vitkit.detection.refine import BoxRefinement, check_cross_attn, use_deformable_cross_attention
from vitkit.layers import SinePositionEncoding2D


@dataclass
class DETRParts:
    """The parts a :class:`DETR` is composed of (None = switched off); not registered as modules themselves."""
    learned: LearnedQueries | None = None
    anchors: LearnedAnchors | None = None
    two_stage: TwoStageSelection | None = None
    denoising: DenoisingSource | None = None
    refine: BoxRefinement | None = None


class DETR(nn.Module):
    """DETR-style set-prediction detector.

    Args:
        encoder: a :class:`ViTEncoder` (its patch source may be a CNN).
        decoder: a :class:`TransformerDecoder` with ``return_intermediate=True``.
        num_classes: number of object classes C (contiguous labels 0..C-1).
        num_queries: one-to-one object queries Q.
        sigmoid_head: C sigmoid logits instead of C+1 softmax logits with a no-object class.
        box_refine: anchor-box queries with per-layer iterative refinement.
        num_queries_one2many: extra one-to-many queries used in training only (0 = off).
        two_stage: initial queries selected from encoder proposals (needs ``box_refine`` and ``sigmoid_head``).
        anchor_size: width and height of the two-stage grid anchors, as a fraction of the image.
        num_denoising, dn_label_noise, dn_box_noise: denoising query budget per batch in training (0 = off; needs
            ``box_refine``), label flip rate x 2, box jitter scale.
        multiscale, coarse_level: add a memory grid at half / twice the encoder's stride.
        cross_attn: "global" or "deformable" (needs ``box_refine``; ``num_points`` per head and level).
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
        two_stage: bool = False,
        anchor_size: float = 0.1,
        num_denoising: int = 0,
        dn_label_noise: float = 0.5,
        dn_box_noise: float = 1.0,
        multiscale: bool = False,
        coarse_level: bool = False,
        cross_attn: str = "global",
        num_points: int = 4,
    ) -> None:
        super().__init__()
        # Each switch's rules live with its part; all are checked before the decoder is touched.
        if two_stage:
            TwoStageSelection.check(box_refine, sigmoid_head)
        check_cross_attn(cross_attn, box_refine)
        if num_denoising:
            DenoisingSource.check(box_refine)
        if not decoder.return_intermediate:
            raise ValueError("DETR needs a TransformerDecoder with return_intermediate=True")
        D = decoder.dim
        self.encoder, self.decoder = encoder, decoder
        # The constructor's flags, as given (the parts keep what they use).
        self.num_classes, self.num_queries = num_classes, num_queries
        self.num_queries_one2many = num_queries_one2many
        self.sigmoid_head, self.box_refine = sigmoid_head, box_refine
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
        if (multiscale or coarse_level) and not self.deformable:
            self.level_embed = nn.Parameter(torch.zeros(1 + multiscale + coarse_level, D))
        if self.deformable:
            use_deformable_cross_attention(decoder, 1 + multiscale + coarse_level, num_points)
        self.pos_sine = SinePositionEncoding2D(D)
        self._build_parts(D, num_classes, num_queries + num_queries_one2many, decoder)
        self._reset_parameters()

    def _build_parts(self, D: int, num_classes: int, total_q: int, decoder: TransformerDecoder) -> None:
        """Create the heads and parts in a fixed order (the order of random initialisation) and register their
        modules under their state-dict names."""
        parts = DETRParts()
        if self.two_stage:
            self.query_embed = None
        else:
            parts.learned = self._register(LearnedQueries(total_q, D))
        self.class_embed = nn.Linear(D, num_classes if self.sigmoid_head else num_classes + 1)
        self.bbox_embed = MLP(D, D, 4, 3)
        if self.two_stage:
            parts.two_stage = self._register(TwoStageSelection(D, num_classes))
        if self.num_denoising:
            parts.denoising = self._register(DenoisingSource(num_classes, D, self.num_denoising, self.dn_label_noise,
                                                             self.dn_box_noise))
        if self.box_refine:
            if self.two_stage:
                self.refpoint_embed = None
            else:
                parts.anchors = self._register(LearnedAnchors(total_q))
            parts.refine = self._register(BoxRefinement(D, decoder.depth, self.bbox_embed))
        self.parts = parts

    def _register(self, part: nn.Module) -> nn.Module:
        """Register ``part``'s modules on this model under their own names; return the part."""
        for name, module in part.named_children():
            setattr(self, name, module)
        return part

    def _reset_parameters(self) -> None:
        if self.sigmoid_head:
            nn.init.constant_(self.class_embed.bias, PRIOR_LOGIT)
        for part in (self.parts.two_stage, self.parts.refine, self.parts.anchors):  # anchors last: they draw numbers
            if part is not None:
                part.reset_parameters()

    def _memory_pos(self, enc, mask: Tensor) -> Tensor | None:
        """Cross-attention key positions (B, P+N, D): the encoder's per-block positions when it has them at the
        decoder width (DETR), else a 2D sine encoding of the grid (zeros for prefix tokens); None with deformable
        cross-attention (it reads no key positions)."""
        if self.deformable:
            return None
        if enc.pos is not None and enc.pos.shape[-1] == self.decoder.dim:
            return enc.pos
        B = mask.shape[0]
        h, w = enc.grid
        grid_mask = mask[:, enc.num_prefix:].reshape(B, h, w)  # (B, h, w)
        pos = self.pos_sine(grid_mask, dtype=enc.tokens.dtype).reshape(B, h * w, -1)  # (B, h*w, D)
        if enc.num_prefix:
            pos = torch.cat((pos.new_zeros(B, enc.num_prefix, pos.shape[-1]), pos), dim=1)  # (B, P+h*w, D)
        return pos

    def forward(self, images: Tensor, mask: Tensor | None = None, targets: list[dict] | None = None,
                features: bool = False) -> dict:
        """Detect.

        Args:
            images: (B, 3, H, W) normalised images, zero-padded.
            mask: optional (B, H, W) bool pixel padding mask, True = padding.
            targets: training targets (``labels``, normalised cxcywh ``boxes``), used only for denoising queries.
            features: also return the one-to-one queries' last decoder states and the encoder's grid.

        Returns:
            dict with
            - ``pred_logits``: (B, Q, C+1) softmax logits (last = no object), or (B, Q, C) for sigmoid heads;
            - ``pred_boxes``: (B, Q, 4) normalised cxcywh in [0, 1], relative to the unpadded image;
            - ``aux_outputs``: list of L-1 dicts with the same keys for the earlier decoder layers;
            - ``one2many`` (training with one-to-many queries): the same structure for the extra queries;
            - ``enc_outputs`` (two-stage): every patch token's proposal, ``pred_logits`` (B, N, C) (padding tokens
              at -1e4) and ``pred_boxes`` (B, N, 4);
            - ``dn_outputs`` (training with denoising): the denoising outputs (with ``aux_outputs``) and
              ``dn_meta``, a :class:`DenoisingMeta`;
            - with ``features``: ``hidden`` (B, Q, D), ``grid`` (B, D, h, w) the encoder's tokens at the decoder
              width and ``grid_mask`` (B, h, w) True = padding.
        """
        enc = self.encoder(images, mask, return_stem=self.finer is not None and self.finer.lateral is not None)
        memory = self.input_proj(enc.tokens)  # (B, P+N, D)
        mem_pad = enc.mask  # (B, P+N)
        mem_pos = self._memory_pos(enc, enc.mask)
        levels = [(enc.grid, self.anchor_size)]  # per memory grid after the prefix: (h, w), anchor size
        if self.finer is not None or self.coarser is not None:
            memory, mem_pad, mem_pos = self._add_levels(enc, memory, mem_pad, mem_pos, levels)
        total_q = self.num_queries + (self.num_queries_one2many if self.training else 0)
        P, enc_out = enc.num_prefix, None
        if self.parts.two_stage is not None:
            queries, enc_out = self.parts.two_stage(memory[:, P:], mem_pad[:, P:], levels, total_q)
        else:
            queries = self.parts.learned(memory.shape[0], total_q, memory.dtype, self.parts.anchors)
        dn = None
        if self.training and self.parts.denoising is not None and targets is not None:
            dn = self.parts.denoising(targets)
        n_dn = dn.num_queries if dn is not None else 0
        attn_mask = query_attention_mask(n_dn, dn.meta.num_groups if dn else 1, self.num_queries,
                                         total_q - self.num_queries, memory.device)
        if dn is not None:
            queries = queries.with_denoising(dn)
        logits, boxes, hs = self._decode(queries, memory, mem_pos, mem_pad, attn_mask, P, levels)
        out = self._outputs(logits, boxes, total_q, enc_out, dn)
        if features:
            (h, w), B = enc.grid, memory.shape[0]
            out["hidden"] = hs[-1, :, n_dn:n_dn + self.num_queries]  # (B, Q, D)
            out["grid"] = memory[:, P:P + h * w].transpose(1, 2).reshape(B, -1, h, w)  # (B, D, h, w)
            out["grid_mask"] = mem_pad[:, P:P + h * w].reshape(B, h, w)  # (B, h, w)
        return out

    def _decode(self, queries: Queries, memory: Tensor, mem_pos: Tensor | None, mem_pad: Tensor,
                attn_mask: Tensor | None, num_prefix: int, levels: list) -> tuple[Tensor, Tensor, Tensor]:
        """Run the decoder (with the refinement hook when refining) -> logits (L, B, Qt, C'), boxes (L, B, Qt, 4),
        states (L, B, Qt, D)."""
        mem_mask = mem_pad if mem_pad.any() else None  # (B, P+N)
        refine, hook = self.parts.refine, None
        if refine is not None and self.deformable:  # deformable attention samples the grids after the prefix
            shapes = [hw for hw, _ in levels]
            memory, mem_pad = memory[:, num_prefix:], mem_pad[:, num_prefix:]  # (B, N, D), (B, N)
            hook = refine.hook(self.class_embed, queries.boxes, memory.dtype, grid_pad=mem_pad, shapes=shapes)
            mem_pos, mem_mask = None, mem_pad
        elif refine is not None:
            hook = refine.hook(self.class_embed, queries.boxes, memory.dtype)
        hs = self.decoder(queries.content, memory, query_pos=queries.pos, memory_pos=mem_pos,
                          memory_key_padding_mask=mem_mask, self_attn_mask=attn_mask, hook=hook)  # (L, B, Qt, D)
        if hook is not None:
            return (*hook.predictions(), hs)
        return self.class_embed(hs), self.bbox_embed(hs).sigmoid(), hs  # (L, B, Qt, C'), (L, B, Qt, 4), (L, B, Qt, D)

    def _outputs(self, logits: Tensor, boxes: Tensor, total_q: int, enc_out: dict | None,
                 dn: DenoisingQueries | None) -> dict:
        """Split every layer's [denoising | one-to-one | one-to-many] predictions into the output dict."""
        n_dn = dn.num_queries if dn is not None else 0
        dn_logits, dn_boxes = logits[:, :, :n_dn], boxes[:, :, :n_dn]  # (L, B, Ndn, .)
        logits, boxes = logits[:, :, n_dn:], boxes[:, :, n_dn:]  # (L, B, Qt, .)
        out = self._pack(logits[:, :, : self.num_queries], boxes[:, :, : self.num_queries])
        if enc_out is not None:
            out["enc_outputs"] = enc_out
        if total_q > self.num_queries:
            out["one2many"] = self._pack(logits[:, :, self.num_queries:], boxes[:, :, self.num_queries:])
        if dn is not None:
            out["dn_outputs"] = {**self._pack(dn_logits, dn_boxes), "dn_meta": dn.meta}
        return out

    def _add_levels(self, enc, memory: Tensor, mem_pad: Tensor, mem_pos: Tensor | None,
                    levels: list) -> tuple[Tensor, Tensor, Tensor | None]:
        """Append the finer (half-stride) and coarser (double-stride) grids to the memory, each with sine positions
        plus a level embedding; extend ``levels`` in place."""
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

    def _pack(self, logits: Tensor, boxes: Tensor) -> dict:
        """Every layer's (L, B, Q, .) predictions -> the last layer's and the earlier layers' ``aux_outputs``."""
        aux = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1], strict=True)]
        return {"pred_logits": logits[-1], "pred_boxes": boxes[-1], "aux_outputs": aux}
