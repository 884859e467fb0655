"""Captioner: ViTEncoder -> causal TransformerDecoder over caption tokens -> next-token logits.

The output projection is tied to the token embedding. Teacher forcing: (B, T) ids -> (B, T, V) logits;
incremental decoding: :meth:`Captioner.init_state` / :meth:`Captioner.step` with KV caches. Token sequences are
``[BOS] tokens [EOS] [PAD]...`` (right padding only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitkit.captioning.decoding import beam_search, greedy_decode, sample_decode
from vitkit.core.decoder import TransformerDecoder
from vitkit.core.encoder import EncoderOutput, ViTEncoder
from vitkit.layers import KVCache, SinePositionEncoding2D


def captions_per_image(images: int, captions: int) -> int:
    """k, the number of caption rows per image (an image's k captions in consecutive rows)."""
    if captions % images:
        raise ValueError(f"a training batch has {images} images and {captions} caption rows: every image needs the "
                         "same number of captions (data.captions_per_image)")
    return captions // images


def per_caption_rows(images: int, captions: int, device: torch.device | None = None) -> Tensor | None:
    """The image row of each of ``captions`` caption rows (:func:`captions_per_image`' layout): (B*k,) long, for
    :func:`memory_rows`; None when k = 1."""
    k = captions_per_image(images, captions)
    return None if k == 1 else torch.arange(images, device=device).repeat_interleave(k)


def memory_rows(memory: Tensor, memory_mask: Tensor | None, memory_pos: Tensor | None,
                rows: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Rows of a decoder memory (B, N, D), its (B, N) mask and (B, N, D) positions (either may be None): ``rows`` (R,)
    long indices into B, or None = all, as they are."""
    if rows is None:
        return memory, memory_mask, memory_pos
    return (memory[rows], None if memory_mask is None else memory_mask[rows],
            None if memory_pos is None else memory_pos[rows])


@dataclass
class DecodeState:
    """Incremental-decoding state of R rows (images, or beams of images).

    Attributes:
        caches: one (self-attention KVCache, static cross-attention KVCache) pair per decoder layer.
        memory: (R, N, D) decoder memory; only read until the first step has filled the cross caches.
        memory_mask: (R, N) True = padding, or None.
        memory_pos: (R, N, D) cross-attention key positions, or None; dropped after the first step (the cached
            keys already hold them).
        length: tokens fed so far, i.e. the position of the next token.
    """
    caches: list[tuple[KVCache, KVCache]]
    memory: Tensor
    memory_mask: Tensor | None
    memory_pos: Tensor | None
    length: int = 0

    def reorder(self, index: Tensor, cross: bool = True) -> None:
        """Select rows in place.

        Args:
            index: (R',) long row indices into the current R rows.
            cross: also select the image side (cross caches, memory, its mask and positions); False is valid
                when every row maps onto a row of the same image.
        """
        for self_cache, cross_cache in self.caches:
            self_cache.reorder(index)
            if cross:
                cross_cache.reorder(index)
        if not cross:
            return
        self.memory = self.memory.index_select(0, index)
        if self.memory_mask is not None:
            self.memory_mask = self.memory_mask.index_select(0, index)
        if self.memory_pos is not None:
            self.memory_pos = self.memory_pos.index_select(0, index)


class Captioner(nn.Module):
    """Image captioning model.

    Args:
        encoder: a :class:`ViTEncoder`; None builds the text side alone (captions memory given to it).
        decoder: a :class:`TransformerDecoder` built with ``return_intermediate=False``.
        vocab_size: number of token ids V.
        max_length: longest token sequence, BOS and EOS included.
        pad_id, bos_id, eos_id: special token ids (distinct).
        label_smoothing: label smoothing of the training loss.

    Raises:
        ValueError: a decoder with ``return_intermediate=True``, special ids that are not distinct, or
            ``max_length`` < 2.
    """
    def __init__(
        self,
        encoder: ViTEncoder | None,
        decoder: TransformerDecoder,
        vocab_size: int,
        max_length: int = 32,
        pad_id: int = 0,
        bos_id: int = 1,
        eos_id: int = 2,
        label_smoothing: float = 0.1,
    ) -> None:
        super().__init__()
        if decoder.return_intermediate:
            raise ValueError("Captioner needs a TransformerDecoder with return_intermediate=False (it predicts "
                             "tokens from the last layer only)")
        if len({pad_id, bos_id, eos_id}) != 3:
            raise ValueError(f"pad_id, bos_id and eos_id must differ, got {pad_id}, {bos_id}, {eos_id}")
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 (BOS and EOS), got {max_length}")
        D = decoder.dim
        self.encoder, self.decoder = encoder, decoder
        self.vocab_size, self.max_length = vocab_size, max_length
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.label_smoothing = label_smoothing
        self.input_proj = (nn.Linear(encoder.embed_dim, D) if encoder is not None and encoder.embed_dim != D
                           else nn.Identity())
        self.pos_sine = SinePositionEncoding2D(D)
        self.token_embed = nn.Embedding(vocab_size, D, padding_idx=pad_id)
        self.pos_embed = nn.Embedding(max_length, D)
        self.lm_head = nn.Linear(D, vocab_size, bias=False)
        self._reset_parameters()
        self.lm_head.weight = self.token_embed.weight

    def _reset_parameters(self) -> None:
        for emb in (self.token_embed, self.pos_embed):
            nn.init.normal_(emb.weight, std=0.02)
        with torch.no_grad():
            self.token_embed.weight[self.pad_id].zero_()

    # ------------------------------------------------------------------------------------------- image side
    def _memory_pos(self, enc: EncoderOutput) -> Tensor:
        """(B, P + h*w, D) cross-attention key positions: 2D sine of the grid, zero for the P prefix tokens."""
        B = enc.tokens.shape[0]
        h, w = enc.grid
        grid_mask = enc.mask[:, enc.num_prefix:].reshape(B, h, w)  # (B, h, w)
        pos = self.pos_sine(grid_mask, dtype=enc.tokens.dtype).reshape(B, h * w, -1)  # (B, h*w, D)
        if enc.num_prefix:
            pos = torch.cat((pos.new_zeros(B, enc.num_prefix, pos.shape[-1]), pos), dim=1)  # (B, P+h*w, D)
        return pos

    def encode(self, images: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor]:
        """Encode (B, 3, H, W) normalised zero-padded images (mask: optional (B, H, W) bool, True = padding).

        Returns:
            memory (B, N, D) at the decoder width; memory_mask (B, N) True = padding, or None when nothing is
            padded; memory_pos (B, N, D) cross-attention key positions.
        """
        memory, memory_mask, memory_pos, _ = self.encode_with_grid(images, mask)
        return memory, memory_mask, memory_pos

    def encode_with_grid(self, images: Tensor, mask: Tensor | None = None
                         ) -> tuple[Tensor, Tensor | None, Tensor, tuple[int, int]]:
        """:meth:`encode` plus the patch grid (h, w): the memory's last h*w rows are the grid's tokens, row-major,
        after the encoder's ``num_prefix`` prefix tokens."""
        if self.encoder is None:
            raise RuntimeError("this Captioner has no image encoder (the text side alone): give it memory "
                               "(decode_tokens, generate_from_memory)")
        enc = self.encoder(images, mask)
        memory = self.input_proj(enc.tokens)  # (B, N, D)
        memory_mask = enc.mask if enc.mask.any() else None
        return memory, memory_mask, self._memory_pos(enc), enc.grid

    # -------------------------------------------------------------------------------------------- text side
    def _embed(self, tokens: Tensor, start: int) -> Tensor:
        """(B, T) ids at positions start..start+T-1 -> (B, T, D) inputs; ValueError when start + T > ``max_length``."""
        T = tokens.shape[1]
        if start + T > self.max_length:
            raise ValueError(f"{start + T} tokens exceed the learned position table (max_length={self.max_length})")
        positions = torch.arange(start, start + T, device=tokens.device)
        x = self.token_embed(tokens)  # (B, T, D)
        return x + self.pos_embed(positions).to(x.dtype)  # (B, T, D)

    def decode_tokens(self, tokens: Tensor, memory: Tensor, memory_mask: Tensor | None = None,
                      memory_pos: Tensor | None = None) -> Tensor:
        """Teacher-forced logits from precomputed memory (see :meth:`encode`).

        Args:
            tokens: (B, T) ids, BOS first, right-padded.
            memory: (B, N, D); memory_mask: (B, N) True = padding; memory_pos: (B, N, D). Or the memory of M
                images with B = M*k (an image's k captions in consecutive token rows).

        Returns:
            (B, T, V) logits; row t predicts token t+1.
        """
        groups = captions_per_image(memory.shape[0], tokens.shape[0])
        x = self._embed(tokens, 0)
        # Right padding only: a real token never sees a later pad under the causal mask, so no key mask needed.
        h = self.decoder(x, memory, memory_pos=memory_pos, memory_key_padding_mask=memory_mask, is_causal=True,
                         memory_groups=groups)  # (B, T, D)
        return self.lm_head(h)  # (B, T, V)

    def forward(self, images: Tensor, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """Teacher-forced next-token logits: (B, 3, H, W) images, (B, T) ids, optional (B, H, W) mask (True = padding)
        -> (B, T, V) logits; position t predicts token t+1.
        """
        return self.decode_tokens(tokens, *self.encode(images, mask))

    def loss(self, logits: Tensor, tokens: Tensor) -> Tensor:
        """Label-smoothed cross-entropy of logits[:, :-1] against tokens[:, 1:], mean over non-pad targets.

        Returns:
            scalar loss (fp32).
        """
        V = logits.shape[-1]
        pred = logits[:, :-1].reshape(-1, V).float()  # (B*(T-1), V)
        target = tokens[:, 1:].reshape(-1)  # (B*(T-1),)
        return F.cross_entropy(pred, target, ignore_index=self.pad_id, label_smoothing=self.label_smoothing)

    # ------------------------------------------------------------------------------------- incremental steps
    def init_state(self, memory: Tensor, memory_mask: Tensor | None = None,
                   memory_pos: Tensor | None = None) -> DecodeState:
        """Fresh decoding state for R rows of memory (R, N, D) (see :meth:`encode`)."""
        return DecodeState(self.decoder.init_cache(), memory, memory_mask, memory_pos)

    def step(self, tokens: Tensor, state: DecodeState) -> Tensor:
        """Feed (R,) or (R, T) new tokens at positions ``state.length`` onwards (``state`` updated in place).

        Returns:
            (R, V) logits of the token after the last one fed.
        """
        if tokens.dim() == 1:
            tokens = tokens[:, None]  # (R, 1)
        x = self._embed(tokens, state.length)
        h = self.decoder(x, state.memory, memory_pos=state.memory_pos, memory_key_padding_mask=state.memory_mask,
                         is_causal=True, caches=state.caches)  # (R, T, D)
        state.length += tokens.shape[1]
        state.memory_pos = None  # the cross caches now hold the positioned keys
        return self.lm_head(h[:, -1])  # (R, V)

    # -------------------------------------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(
        self,
        images: Tensor,
        mask: Tensor | None = None,
        method: str = "greedy",
        max_length: int | None = None,
        min_length: int = 0,
        num_beams: int = 3,
        length_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Caption images (call ``eval()`` first for deterministic results).

        Args:
            images: (B, 3, H, W) normalised images, zero-padded.
            mask: optional (B, H, W) pixel padding mask, True = padding.
            method: "greedy", "beam" or "sample".
            max_length: longest returned sequence, BOS and EOS included (default ``self.max_length``).
            min_length: EOS is forbidden until this many tokens follow BOS.
            num_beams: beams per image (beam search).
            length_penalty: beam scores are sum log-prob / length ** length_penalty.
            no_repeat_ngram_size: n > 0 forbids repeating any n-gram within a sequence.
            temperature, top_k, top_p: sampling settings (top_k 0 and top_p 1 are off).
            generator: random generator for sampling (on the images' device).

        Returns:
            ids (B, T) ``[BOS] tokens [EOS]`` right-padded with pad_id, T <= max_length; scores (B,) fp32: sum of
            the generated tokens' log-probabilities (EOS included), / length ** length_penalty for beam search.
        """
        return self.generate_from_memory(*self.encode(images, mask), method=method, max_length=max_length,
                                         min_length=min_length, num_beams=num_beams, length_penalty=length_penalty,
                                         no_repeat_ngram_size=no_repeat_ngram_size, temperature=temperature,
                                         top_k=top_k, top_p=top_p, generator=generator)

    @torch.no_grad()
    def generate_from_memory(self, memory: Tensor, memory_mask: Tensor | None = None,
                             memory_pos: Tensor | None = None, method: str = "greedy", max_length: int | None = None,
                             min_length: int = 0, num_beams: int = 3, length_penalty: float = 1.0,
                             no_repeat_ngram_size: int = 0, temperature: float = 1.0, top_k: int = 0,
                             top_p: float = 1.0, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """:meth:`generate` from precomputed memory (R, N, D) (mask (R, N) True = padding, positions (R, N, D), or
        None each): one caption per row; the options and outputs are :meth:`generate`'s."""
        if method not in ("greedy", "beam", "sample"):
            raise ValueError(f"method must be greedy|beam|sample, got {method!r}")
        max_length = self.max_length if max_length is None else max_length
        if max_length > self.max_length:
            raise ValueError(f"max_length {max_length} exceeds the learned position table ({self.max_length})")
        common = dict(max_length=max_length, min_length=min_length, no_repeat_ngram_size=no_repeat_ngram_size)
        if method == "greedy":
            return greedy_decode(self, memory, memory_mask, memory_pos, **common)
        if method == "beam":
            return beam_search(self, memory, memory_mask, memory_pos, num_beams=num_beams,
                               length_penalty=length_penalty, **common)
        return sample_decode(self, memory, memory_mask, memory_pos, temperature=temperature, top_k=top_k, top_p=top_p,
                             generator=generator, **common)
