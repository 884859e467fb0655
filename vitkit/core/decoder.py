"""TransformerDecoder: a stack of :class:`DecoderBlock` shared by detection and captioning.

Returns every layer's output through the shared final norm (or only the last with ``return_intermediate=False``);
``query_pos`` is added to q/k in every layer. ``forward(..., hook=...)`` takes a :class:`DecoderHook`.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor, nn

from vitkit.layers import DecoderBlock, KVCache

# The per-layer arguments a hook may set (see DecoderHook.before_layer).
HOOK_KEYS = frozenset({"query_pos", "cross_attn_kwargs"})


class DecoderHook(Protocol):
    """Per-layer strategy for :meth:`TransformerDecoder.forward` (duck-typed: any object with these methods)."""

    def before_layer(self, index: int, x: Tensor) -> dict[str, Any]:
        """Arguments for layer ``index`` given its input states x (B, Q, D).

        Returns:
            any of ``query_pos`` (B|1, Q, D) and ``cross_attn_kwargs`` (a dict for a replaced cross-attention
            module); they replace the values given to ``forward`` for this layer.
        """
        ...

    def after_layer(self, index: int, out: Tensor) -> None:
        """Receive layer ``index``'s output after the shared final norm, (B, Q, D)."""
        ...


class TransformerDecoder(nn.Module):
    """Decoder stack.

    Args:
        dim: width D.
        mlp_dim, mlp_ratio: MLP hidden width, or as a multiple of D (``mlp_dim`` wins).
        dropout, attn_drop, drop_path: regularisation (drop path grows linearly to ``drop_path``).
        norm_first: pre-norm (True) or post-norm (False, DETR).
        return_intermediate: return all layers' outputs (L, B, Q, D) instead of the last (B, Q, D).
        act, norm_eps: MLP activation name, LayerNorm eps (the shared final norm's eps too).
    """
    def __init__(
        self,
        dim: int = 256,
        depth: int = 6,
        num_heads: int = 8,
        mlp_dim: int | None = None,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_first: bool = True,
        return_intermediate: bool = True,
        act: str = "gelu",
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.dim, self.depth, self.num_heads = dim, depth, num_heads
        self.return_intermediate = return_intermediate
        dpr = torch.linspace(0, drop_path, depth).tolist() if depth > 1 else [drop_path] * depth
        self.layers = nn.ModuleList(
            DecoderBlock(dim, num_heads, mlp_dim=mlp_dim, mlp_ratio=mlp_ratio, dropout=dropout, attn_drop=attn_drop,
                         drop_path=dpr[i], norm_first=norm_first, act=act, norm_eps=norm_eps)
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=norm_eps)

    def init_cache(self) -> list[tuple[KVCache, KVCache]]:
        """Fresh (self, cross) KV caches, one pair per layer, for incremental decoding."""
        return [(KVCache(), KVCache(static=True)) for _ in self.layers]

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        *,
        query_pos: Tensor | None = None,
        memory_pos: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None,
        self_attn_mask: Tensor | None = None,
        is_causal: bool = False,
        caches: list[tuple[KVCache, KVCache]] | None = None,
        hook: DecoderHook | None = None,
        memory_groups: int = 1,
    ) -> Tensor:
        """Decode.

        Args:
            tgt: (B, Q, D) initial states.
            memory: (B, N, D) encoder tokens.
            query_pos: (B|1, Q, D) query positions.
            memory_pos: (B|1, N, D) memory positions added to cross-attention keys.
            memory_key_padding_mask: (B, N) True = padding.
            tgt_key_padding_mask: (B, T) True = padding token (T includes cached tokens).
            self_attn_mask: bool mask for self-attention, True = masked out.
            caches: from :meth:`init_cache`, for incremental decoding (tgt then holds only new tokens).
            hook: a :class:`DecoderHook` called before and after every layer (None: none).
            memory_groups: g > 1 = ``tgt`` has B = M*g rows, every g consecutive ones reading the same row of an
                (M, N, D) ``memory`` (mask (M, N), positions (M|1, N, D)).

        Returns:
            (L, B, Q, D) normalised outputs of every layer if ``return_intermediate``, else (B, Q, D).
        """
        x = tgt
        if tgt.shape[0] != memory.shape[0] * memory_groups:
            raise ValueError(f"{tgt.shape[0]} target rows do not match {memory.shape[0]} memory rows x "
                             f"memory_groups={memory_groups}")
        outs = []
        given = {"query_pos": query_pos, "cross_attn_kwargs": None, "memory_groups": memory_groups}
        for i, layer in enumerate(self.layers):
            cache, cross_cache = caches[i] if caches is not None else (None, None)
            per_layer = given if hook is None else {**given, **_checked(hook.before_layer(i, x))}
            x = layer(x, memory, memory_pos=memory_pos, tgt_key_padding_mask=tgt_key_padding_mask,
                      memory_key_padding_mask=memory_key_padding_mask, self_attn_mask=self_attn_mask,
                      is_causal=is_causal, cache=cache, cross_cache=cross_cache, **per_layer)
            if self.return_intermediate or hook is not None:
                out = self.norm(x)  # (B, Q, D)
                if hook is not None:
                    hook.after_layer(i, out)
                if self.return_intermediate:
                    outs.append(out)
        if self.return_intermediate:
            return torch.stack(outs)  # (L, B, Q, D)
        return self.norm(x)  # (B, Q, D)


def _checked(args: dict[str, Any]) -> dict[str, Any]:
    unknown = set(args) - HOOK_KEYS
    if unknown:
        raise ValueError(f"a decoder hook may set {sorted(HOOK_KEYS)}, not {sorted(unknown)}")
    return args
