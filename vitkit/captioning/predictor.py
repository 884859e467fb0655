"""CaptionPipeline: a :class:`~vitkit.captioning.Captioner` with its tokenizer, preprocessing and decoding defaults.

``vitkit.load(ckpt).caption(["a.jpg"])`` -> ``[{"caption": str, "score": float}, ...]``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from vitkit.captioning.preprocess import CaptionPreprocess
from vitkit.captioning.tokenizer import CaptionTokenizer
from vitkit.kernels.precision import apply_precision, model_dtype

METHODS = ("greedy", "beam", "sample")
# Captioner.generate options a checkpoint's hyper_parameters may set as defaults (with their types).
_NUMBER = (int, float)
GENERATION_KEYS = {"method": str, "num_beams": int, "max_length": int, "min_length": int, "length_penalty": _NUMBER,
                   "no_repeat_ngram_size": int, "temperature": _NUMBER, "top_k": int, "top_p": _NUMBER}
DEFAULT_GENERATION: dict[str, Any] = {"method": "beam", "num_beams": 3, "max_length": None, "min_length": 0,
                                      "length_penalty": 1.0, "no_repeat_ngram_size": 0}


class CaptionPipeline(nn.Module):
    """Images in, caption strings out.

    Args:
        captioner: the captioning network.
        tokenizer: the tokenizer it was trained with; its special ids must match the captioner's.
        size: short side in px for preprocessing.
        max_size: cap on the long side in px, or None.
        generation: defaults for :meth:`caption` / :meth:`generate` (keys of :data:`GENERATION_KEYS`), over
            :data:`DEFAULT_GENERATION`.

    Raises:
        ValueError: the tokenizer and the captioner disagree on special ids or vocabulary size, or a
            generation default is unknown.
    """
    def __init__(self, captioner: nn.Module, tokenizer: CaptionTokenizer, size: int = 224,
                 max_size: int | None = 448, generation: dict[str, Any] | None = None) -> None:
        super().__init__()
        ids = (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id)
        model_ids = (captioner.pad_id, captioner.bos_id, captioner.eos_id)
        if ids != model_ids:
            raise ValueError(f"tokenizer special ids (pad, bos, eos) = {ids} differ from the captioner's {model_ids}")
        if tokenizer.vocab_size > captioner.vocab_size:
            raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but the captioner only "
                             f"{captioner.vocab_size} embeddings; they do not belong together")
        unknown = set(generation or {}) - set(GENERATION_KEYS)
        if unknown:
            raise ValueError(f"unknown generation option(s) {sorted(unknown)}; known: {sorted(GENERATION_KEYS)}")
        self.captioner, self.tokenizer = captioner, tokenizer
        self.transform = CaptionPreprocess(size, max_size)
        self.generation = {**DEFAULT_GENERATION, **(generation or {})}

    @property
    def size(self) -> int:
        return self.transform.size

    @property
    def max_size(self) -> int | None:
        return self.transform.max_size

    @property
    def device(self) -> torch.device:
        return next(self.captioner.parameters()).device

    def set_precision(self, precision: str) -> CaptionPipeline:
        """Run the captioner in ``"bf16"``, ``"fp32"`` or ``"auto"``; scores come back float32 either way."""

        apply_precision(self.captioner, precision)
        return self

    # ------------------------------------------------------------------------------------------ preprocessing
    def preprocess(self, images: Sequence[str | os.PathLike | Image.Image | Tensor]) -> tuple[Tensor, Tensor]:
        """Paths / PIL images / (3, H, W) uint8 or [0, 1] float tensors -> padded batch (B, 3, Hmax, Wmax) float32, mask
        (B, Hmax, Wmax) True = padding. Raises ``ImageReadError`` for a bad file.
        """
        return self.transform.batch(images)

    # ------------------------------------------------------------------------------------------ generation
    def generation_options(self, **overrides: Any) -> dict[str, Any]:
        """The options :meth:`generate` passes to ``Captioner.generate``: the defaults, then the non-None
        ``overrides``, checked. ``method="beam"`` with ``num_beams=1`` becomes greedy (the same search)."""
        opts = dict(self.generation)
        opts.update({k: v for k, v in overrides.items() if v is not None})
        if opts["method"] not in METHODS:
            raise ValueError(f"method must be one of {'|'.join(METHODS)}, got {opts['method']!r}")
        if opts["method"] == "beam":
            if opts["num_beams"] < 1:
                raise ValueError(f"num_beams must be >= 1, got {opts['num_beams']}")
            if opts["num_beams"] == 1:
                opts["method"] = "greedy"
        limit = self.captioner.max_length
        if opts["max_length"] is not None:
            if opts["max_length"] < 2:
                raise ValueError(f"max_length must be >= 2 tokens (BOS and EOS count), got {opts['max_length']}")
            if opts["max_length"] > limit:
                raise ValueError(f"max_length {opts['max_length']} exceeds this captioner's limit of {limit} tokens "
                                 "(BOS and EOS included)")
        return opts

    @torch.no_grad()
    def generate(self, images: Tensor, mask: Tensor | None = None, **options: Any) -> list[dict[str, Any]]:
        """Caption a preprocessed batch.

        Args:
            images: (B, 3, H, W) from :meth:`preprocess`.
            mask: (B, H, W) True = padding, or None.
            **options: ``Captioner.generate`` options overriding the defaults.

        Returns:
            B dicts ``{"caption": str, "score": float}``; score is the sequence log-probability (beam search:
            divided by length ** length_penalty).
        """
        opts = self.generation_options(**options)
        device = self.device
        was_training = self.captioner.training
        self.captioner.eval()
        try:
            ids, scores = self.captioner.generate(images.to(device, model_dtype(self.captioner)),
                                                  None if mask is None else mask.to(device), **opts)  # (B, T), (B,)
        finally:
            self.captioner.train(was_training)
        captions = self.tokenizer.decode_batch(ids.cpu())
        return [{"caption": c, "score": float(s)} for c, s in zip(captions, scores.float().cpu().tolist(),
                                                                   strict=True)]

    forward = generate

    def caption(self, images, batch_size: int = 8, method: str | None = None, num_beams: int | None = None,
                max_length: int | None = None, **options: Any) -> list[dict[str, Any]]:
        """Caption images.

        Args:
            images: one or a list of image paths, PIL images or (3, H, W) uint8 tensors.
            batch_size: images per forward pass.
            method: "greedy", "beam" or "sample" (default: the pipeline's).
            num_beams: beams per image (default: the pipeline's); 1 is greedy.
            max_length: longest caption in tokens, BOS and EOS included (default: the captioner's).
            **options: more ``Captioner.generate`` options.

        Returns:
            One dict per image, in order: ``{"caption": str, "score": float}``.

        Raises:
            ImageReadError: a path cannot be read.
        """
        if not isinstance(images, list | tuple):
            images = [images]
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        options = dict(options, method=method, num_beams=num_beams, max_length=max_length)
        self.generation_options(**options)  # fail on bad options before reading any image
        out: list[dict[str, Any]] = []
        for i in range(0, len(images), batch_size):
            batch, mask = self.preprocess(images[i: i + batch_size])
            out.extend(self.generate(batch, mask, **options))
        return out

    def extra_repr(self) -> str:
        return f"size={self.size}, max_size={self.max_size}, generation={self.generation}"
