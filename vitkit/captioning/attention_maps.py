"""Caption attention pictures: per generated token, the last decoder layer's cross-attention over the image."""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from vitkit.kernels.precision import model_dtype
from vitkit.viz.draw import display, grid_figure, heatmap, image_axes, rgb, save
from vitkit.viz.recording import AttentionRecorder, Capture, eval_mode, grid_stride, levels_to_image


@dataclass
class CaptionAttention:
    """A generated caption and where each of its tokens looked.

    Attributes:
        image: (H, W, 3) uint8, the input scaled for display.
        caption: the decoded caption.
        tokens: the generated tokens as text, EOS last (``[EOS]``) when generated.
        maps: (T, H, W) cross-attention density over ``image`` (heads averaged) of the query that predicted each
            token.
    """
    image: np.ndarray
    caption: str
    tokens: list[str]
    maps: np.ndarray


def _token_text(tokenizer: Any, token: int) -> str:
    if token == tokenizer.eos_id:
        return "[EOS]"
    return tokenizer.tokenizer.decode([token], skip_special_tokens=False).strip() or \
        str(tokenizer.tokenizer.id_to_token(token))


@torch.no_grad()
def caption_attention(pipeline: nn.Module, image: str | os.PathLike | Image.Image | Tensor,
                      **generation: Any) -> CaptionAttention:
    """Caption one image and read, per generated token, the last decoder layer's cross-attention that predicted it.

    Args:
        pipeline: from :func:`vitkit.load`.
        image: a path, an RGB PIL image or a (3, H, W) uint8 tensor.
        **generation: options of ``CaptionPipeline.generate``.

    Returns:
        A :class:`CaptionAttention`.
    """
    cap, tok = pipeline.captioner, pipeline.tokenizer
    img = rgb(image)
    batch, mask = pipeline.preprocess([img])  # (1, 3, h, w), (1, h, w)
    opts = pipeline.generation_options(**generation)
    device = pipeline.device
    batch = batch.to(model_dtype(cap))  # bf16 when the pipeline runs in bf16
    with eval_mode(cap):
        ids, _ = cap.generate(batch.to(device), mask.to(device), **opts)  # (1, T)
        seq = ids[0].tolist()
        end = seq.index(tok.eos_id) + 1 if tok.eos_id in seq else len(seq)
        while end > 1 and seq[end - 1] == tok.pad_id:
            end -= 1
        seq = seq[:end]
        with Capture({"encoder": cap.encoder}) as calls, AttentionRecorder(cap.decoder.layers[-1].cross_attn) as rec:
            memory, memory_mask, memory_pos = cap.encode(batch.to(device), mask.to(device))
            cap.decode_tokens(torch.tensor([seq], device=device), memory, memory_mask, memory_pos)
    enc = calls.calls["encoder"][2]
    attn = rec.weights[-1][0].mean(0)[: len(seq) - 1, enc.num_prefix:]  # (T-1, N): row t predicted token t+1
    shown = display(img)
    maps = levels_to_image(attn, [tuple(enc.grid)], [grid_stride(cap.encoder)], tuple(batch.shape[-2:]),
                           shown.shape[:2])
    return CaptionAttention(shown, tok.decode(seq), [_token_text(tok, t) for t in seq[1:]], maps.numpy())


def plot_caption_attention(att: CaptionAttention, path: str | os.PathLike) -> Path:
    """Save a PNG: the image titled with the caption, then one small heatmap per generated token, titled with it,
    in rows of 5 panels."""
    H, W = att.image.shape[:2]
    fig, axes = grid_figure(1 + len(att.tokens), 5, H / W)
    image_axes(axes[0], att.image, "\n".join(textwrap.wrap(att.caption or "(empty caption)", 34)))
    for t, token in enumerate(att.tokens):
        image_axes(axes[t + 1], att.image, f"{t + 1}: {token}")
        heatmap(axes[t + 1], att.maps[t], (H, W), alpha=0.55)
    return save(fig, path)
