"""Multi-head attention over ``F.scaled_dot_product_attention``, for self- and cross-attention.

The input projection is one (3D, D) weight ``qkv`` in [q; k; v] order (timm's ``attn.qkv`` layout). Masks are
True = masked out: ``key_padding_mask`` (B, Tk); ``attn_mask`` bool, broadcastable to (B, heads, Tq, Tk);
``is_causal`` (query i sees keys <= i, offset by the cached length). :class:`KVCache` holds keys and values.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitkit.kernels import packed
from vitkit.kernels.attention import bf16_matmul_attention, bf16_matmul_path, single_query_attention
from vitkit.layers.pos_embed import apply_rope


@dataclass
class KVCache:
    """Keys/values ``k``, ``v`` of one attention layer, each (B, heads, T, head_dim), None until the first call;
    ``static`` True for cross-attention (computed once, reused), False for self-attention (appended)."""
    k: Tensor | None = None
    v: Tensor | None = None
    static: bool = False

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[-2]

    def reorder(self, index: Tensor) -> None:
        """Select batch rows (beam search): index (B',) into dim 0."""
        if self.k is not None:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)


class MultiheadAttention(nn.Module):
    """Multi-head attention with fused projections, masks, RoPE and a KV cache.

    ``dim`` D is the width of queries, keys and values (divisible by ``num_heads``); ``attn_drop``: dropout on the
    attention weights (training only); ``proj_drop``: dropout after the output projection.
    """
    def __init__(self, dim: int, num_heads: int = 8, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _heads(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)

    def _project(self, query: Tensor, key: Tensor | None, value: Tensor | None) -> tuple[Tensor, ...]:
        """Project inputs with as few GEMMs as their identity allows. key=None skips k/v (static cache)."""
        D, qkv = self.dim, self.qkv
        if key is None:
            return (packed.linear(qkv, query, 0, D),)
        if query is key and key is value:
            return qkv(query).chunk(3, dim=-1)  # one GEMM, (B, T, D) x3
        if query is key:
            q, k = packed.linear(qkv, query, 0, 2 * D).chunk(2, dim=-1)
            return q, k, packed.linear(qkv, value, 2 * D, 3 * D)
        q = packed.linear(qkv, query, 0, D)
        if key is value:
            k, v = packed.linear(qkv, key, D, 3 * D).chunk(2, dim=-1)
        else:
            k, v = packed.linear(qkv, key, D, 2 * D), packed.linear(qkv, value, 2 * D, 3 * D)
        return q, k, v

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        *,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        rope: tuple[Tensor, Tensor] | None = None,
        rope_k: tuple[Tensor, Tensor] | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        """Attend; returns (B, Tq, D).

        Args:
            query: (B, Tq, D).
            key: (B, Tk, D); defaults to ``query``.
            value: (B, Tk, D); defaults to ``key``.
            key_padding_mask: (B, Tk) bool, True = padding. With a growing cache it covers all keys so far.
            attn_mask: bool, broadcastable to (B, H, Tq, Tk), True = masked out.
            is_causal: mask keys after each query (aligned to the end when a cache holds earlier keys).
            rope: (sin, cos) each (B|1, N, head_dim) rotating the last N query tokens (and keys, unless
                ``rope_k`` is given).
            rope_k: (sin, cos) for the new keys when they differ from the queries'.
            cache: a :class:`KVCache` to read and update.
        """
        key = query if key is None else key
        value = key if value is None else value
        static_hit = cache is not None and cache.static and cache.k is not None
        proj = self._project(query, None if static_hit else key, None if static_hit else value)
        q = self._queries(proj[0], rope)  # (B, H, Tq, hd)
        if static_hit:
            k, v = cache.k, cache.v
        else:
            k, v = self._keys(proj[1], rope, rope_k), self._heads(proj[2])  # (B, H, Tk_new, hd)
            if cache is not None:
                if cache.length:
                    k, v = torch.cat((cache.k, k), dim=2), torch.cat((cache.v, v), dim=2)  # (B, H, Tk, hd)
                # stored contiguous: SDPA reads (B, H, T, hd) views of the projections far slower at every later step
                cache.k, cache.v = k, v = k.contiguous(), v.contiguous()
        past = self._past(q, k, is_causal, cache)
        mask = self._build_mask(q, k, key_padding_mask, attn_mask, is_causal, past)
        causal_fast = is_causal and mask is None and past == 0 and q.shape[2] > 1
        if q.shape[2] == 1 and q.device.type == "cpu" and not (self.training and self.attn_drop > 0):
            out = single_query_attention(q, k, v, mask)  # a decoding step
        elif bf16_matmul_path(q, k, is_causal and mask is None and q.shape[2] > 1):
            out = bf16_matmul_attention(q, k, v, mask)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.attn_drop if self.training else 0.0, is_causal=causal_fast
            )  # (B, H, Tq, hd)
        out = out.transpose(1, 2).reshape(query.shape[0], query.shape[1], self.dim)  # (B, Tq, D)
        return self.proj_drop(self.proj(out))

    @torch.no_grad()
    def attention_weights(self, *args: Any, **kwargs: Any) -> Tensor:
        """The attention weights of the call ``self(*args, **kwargs)``, given :meth:`forward`'s arguments.

        A ``cache`` holding keys supplies all the keys the call attended to; ``key`` is then not read.

        Returns:
            (B, H, Tq, Tk) float32 softmax weights, rows summing to 1 (masked keys get 0); no gradient.
        """
        call = inspect.signature(self.forward).bind(*args, **kwargs)
        call.apply_defaults()
        a = call.arguments
        query, cache, is_causal = a["query"], a["cache"], a["is_causal"]
        q = self._queries(self._project(query, None, None)[0], a["rope"])  # (B, H, Tq, hd)
        if cache is not None and cache.k is not None:
            k = cache.k  # (B, H, Tk, hd)
        else:
            key = query if a["key"] is None else a["key"]
            k = self._keys(packed.linear(self.qkv, key, self.dim, 2 * self.dim), a["rope"], a["rope_k"])
        mask = self._build_mask(q, k, a["key_padding_mask"], a["attn_mask"], is_causal,
                                self._past(q, k, is_causal, cache))
        if mask is None and is_causal and q.shape[2] > 1:  # SDPA's own causal mask
            mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
        scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(self.head_dim)  # (B, H, Tq, Tk)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return scores.softmax(-1)

    def _queries(self, q: Tensor, rope: tuple[Tensor, Tensor] | None) -> Tensor:
        """Projected queries (B, Tq, D) -> rotated heads (B, H, Tq, hd)."""
        q = self._heads(q)
        return q if rope is None else apply_rope(q, rope)

    def _keys(self, k: Tensor, rope: tuple[Tensor, Tensor] | None, rope_k: tuple[Tensor, Tensor] | None) -> Tensor:
        """Projected new keys (B, Tk, D) -> rotated heads (B, H, Tk, hd)."""
        k = self._heads(k)
        if rope is not None or rope_k is not None:
            k = apply_rope(k, rope_k if rope_k is not None else rope)
        return k

    @staticmethod
    def _past(q: Tensor, k: Tensor, is_causal: bool, cache: KVCache | None) -> int:
        """How many cached keys precede the queries (the causal mask's offset); 0 unless causal with a growing
        cache."""
        return k.shape[2] - q.shape[2] if (is_causal and cache is not None and not cache.static) else 0

    @staticmethod
    def _build_mask(q: Tensor, k: Tensor, key_padding_mask: Tensor | None, attn_mask: Tensor | None,
                    is_causal: bool, past: int) -> Tensor | None:
        """Combine masks into one bool SDPA mask (True = attend, broadcastable to (B, H, Tq, Tk)), or None."""
        Tq, Tk = q.shape[2], k.shape[2]
        blocked = None  # bool, True = masked out, broadcastable to (B, H, Tq, Tk)
        if key_padding_mask is not None:
            blocked = key_padding_mask[:, None, None, :].bool()  # (B, 1, 1, Tk)
        if attn_mask is not None:
            if attn_mask.dtype != torch.bool:
                raise TypeError("attn_mask must be bool (True = masked out)")
            blocked = attn_mask if blocked is None else blocked | attn_mask
        needs_causal = is_causal and (blocked is not None or past > 0) and Tq > 1
        if needs_causal:
            i = torch.arange(Tq, device=q.device)[:, None] + past
            j = torch.arange(Tk, device=q.device)[None, :]
            causal = j > i  # (Tq, Tk)
            blocked = causal if blocked is None else blocked | causal
        if blocked is not None:
            # A query row with every key masked would give NaN; let it see all keys (its output is padding).
            blocked = blocked & ~blocked.all(dim=-1, keepdim=True)
        return None if blocked is None else ~blocked
