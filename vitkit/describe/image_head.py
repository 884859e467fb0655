"""Image captions grounded in the detector's objects (issue 16's grounded captioner, trained jointly).

A captioner trained on image captions alone gets the template right and the object kinds wrong on the shapes set:
within a CPU budget no image-level loss teaches its encoder to tell a star from a square, while a detector's
per-object supervision does (DECISIONS.md, "Captions: object queries as caption memory"). :class:`ImageCaptionHead`
therefore captions an image from the detector it is trained with, bottom-up attention with a DETR:

- the detector's encoder grid (B, h*w, Dd), projected to the text width, each token with a 2D sine position;
- its ``num_objects`` highest-scoring one-to-one queries: the last decoder state (with gradients, so the caption
  loss trains the detector's decoder too) plus an embedding of the query's box and class probabilities (detached).

Its text decoder is a :class:`~vitkit.captioning.Captioner` built with ``encoder=None``, so teacher forcing, the
KV-cache decoders, beam search and SCST (:func:`~vitkit.captioning.scst.scst_memory_step`) are the caption task's.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vitkit.captioning.model import Captioner
from vitkit.core.decoder import TransformerDecoder
from vitkit.layers import SinePositionEncoding2D

Memory = tuple[Tensor, Tensor | None, Tensor]  # memory (B, N, D), mask (B, N) True = padding | None, pos (B, N, D)


def query_probs(logits: Tensor, sigmoid: bool) -> Tensor:
    """(B, Q, C) class probabilities of (B, Q, C[+1]) logits: sigmoid, or softmax without the no-object column."""
    logits = logits.float()
    return logits.sigmoid() if sigmoid else logits.softmax(-1)[..., :-1]


def image_captioner(text: Captioner, decoder: TransformerDecoder) -> Captioner:
    """A text-only :class:`Captioner` on ``decoder`` with ``text``'s vocabulary, ``max_length``, special ids, token
    positions, label smoothing and weight tying (so one tokenizer serves region and image captions)."""
    return Captioner(None, decoder, text.vocab_size, text.max_length, text.pad_id, text.bos_id, text.eos_id,
                     text.token_pos, text.lm_head.weight is text.token_embed.weight, text.label_smoothing)


class ImageCaptionHead(nn.Module):
    """One caption per image from the detector's grid and top objects.

    Args:
        det_dim: the detector's decoder width (its grid tokens and query states).
        num_classes: the detector's class count C (the class-probability part of an object's embedding).
        text: a :class:`Captioner` built with ``encoder=None``.
        num_objects: queries per image in the memory (the highest-scoring ones).
    """

    def __init__(self, det_dim: int, num_classes: int, text: Captioner, num_objects: int = 10) -> None:
        super().__init__()
        if text.encoder is not None:
            raise ValueError("the image caption head's Captioner must be built with encoder=None (it reads the "
                             "detector)")
        if num_objects < 1:
            raise ValueError(f"num_objects must be >= 1, got {num_objects}")
        D = text.decoder.dim
        self.text, self.num_objects, self.num_classes = text, num_objects, num_classes
        self.grid_proj = nn.Sequential(nn.LayerNorm(det_dim), nn.Linear(det_dim, D))
        self.pos_sine = SinePositionEncoding2D(D)
        self.object_proj = nn.Sequential(nn.LayerNorm(det_dim), nn.Linear(det_dim, D))
        self.object_box = nn.Sequential(nn.Linear(4 + num_classes, D), nn.GELU(), nn.Linear(D, D))

    def memory(self, outputs: dict, probs: Tensor) -> Memory:
        """The text memory of a batch.

        Args:
            outputs: the detector's outputs with features (``grid`` (B, Dd, h, w), ``grid_mask`` (B, h, w),
                ``hidden`` (B, Q, Dd), ``pred_boxes`` (B, Q, 4)).
            probs: (B, Q, C) class probabilities of the queries (sigmoid, or softmax without no-object).

        Returns:
            memory (B, h*w + K, D), its padding mask (B, h*w + K) or None when nothing is padded, and key positions
            (B, h*w + K, D) (zero for the objects, whose box is in their embedding).
        """
        grid, grid_mask = outputs["grid"], outputs["grid_mask"]
        B = grid.shape[0]
        tokens = self.grid_proj(grid.flatten(2).transpose(1, 2))  # (B, h*w, D)
        pos = self.pos_sine(grid_mask, dtype=tokens.dtype).flatten(1, 2)  # (B, h*w, D)
        K = min(self.num_objects, probs.shape[1])
        top = probs.detach().max(dim=-1).values.topk(K, dim=1).indices  # (B, K)
        rows = torch.arange(B, device=top.device)[:, None]  # (B, 1)
        state = outputs["hidden"][rows, top]  # (B, K, Dd)
        box_cls = torch.cat((outputs["pred_boxes"][rows, top], probs[rows, top]), dim=-1).detach()  # (B, K, 4+C)
        objects = self.object_proj(state) + self.object_box(box_cls.to(state.dtype))  # (B, K, D)
        memory = torch.cat((tokens, objects.to(tokens.dtype)), dim=1)  # (B, h*w+K, D)
        pos = torch.cat((pos, pos.new_zeros(B, K, pos.shape[-1])), dim=1)
        mask = None
        if grid_mask.any():
            mask = torch.cat((grid_mask.flatten(1), grid_mask.new_zeros(B, K)), dim=1)  # (B, h*w+K)
        return memory, mask, pos

    def loss(self, memory: Memory, tokens: Tensor) -> Tensor:
        """The label-smoothed cross-entropy of (B, T) caption ids, teacher-forced on ``memory``."""
        return self.text.loss(self.text.decode_tokens(tokens, *memory), tokens)

    @torch.no_grad()
    def generate(self, memory: Memory, **generation) -> tuple[Tensor, Tensor]:
        """(B, T) caption ids and (B,) scores (:meth:`Captioner.generate_from_memory`'s options and outputs)."""
        return self.text.generate_from_memory(*memory, **generation)
