"""Transformer blocks: :class:`EncoderBlock` and :class:`DecoderBlock`, each pre- or post-norm.

``norm_first=True``: x + f(norm(x)) (ViT); False: norm(x + f(x)) (DETR). ``pos`` / ``query_pos`` / ``memory_pos``
are added to that attention's queries and keys, never values. Submodule names follow timm.
"""

from __future__ import annotations

from timm.layers import DropPath
from torch import Tensor, nn

from vitkit.layers.attention import KVCache, MultiheadAttention
from vitkit.layers.mlp import Mlp

ACTIVATIONS: dict[str, type[nn.Module] | object] = {
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": nn.ReLU,
}


def make_act(name: str):
    """Activation constructor by name (gelu, gelu_tanh, relu)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _with_pos(x: Tensor, pos: Tensor | None) -> Tensor:
    return x if pos is None else x + pos


class _BlockBase(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_dim: int | None, mlp_ratio: float, dropout: float,
                 attn_drop: float, act: str, norm_eps: float, norm_first: bool) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.attn = MultiheadAttention(dim, num_heads, attn_drop=attn_drop, proj_drop=dropout)
        hidden = mlp_dim if mlp_dim is not None else int(dim * mlp_ratio)
        self.mlp = Mlp(dim, hidden, act_layer=make_act(act), drop=dropout)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)

    def _residuals(self, n: int, drop_path: float) -> None:
        """Create drop_path{i} (DropPath) for the residual branches 1..n, timm's names."""
        for i in range(1, n + 1):
            setattr(self, f"drop_path{i}", DropPath(drop_path) if drop_path > 0 else nn.Identity())


class EncoderBlock(_BlockBase):
    """Self-attention -> MLP.

    Args:
        dim: width D.
        mlp_dim, mlp_ratio: MLP hidden width, or as a multiple of D (``mlp_dim`` wins).
        dropout: dropout after attention and in the MLP.
        attn_drop, drop_path: dropout on attention weights, stochastic depth rate of the residual branches.
        norm_first: pre-norm (ViT) if True, post-norm (DETR) if False.
        act, norm_eps: MLP activation name, LayerNorm eps.
    """
    def __init__(self, dim: int, num_heads: int, mlp_dim: int | None = None, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0, norm_first: bool = True,
                 act: str = "gelu", norm_eps: float = 1e-6) -> None:
        super().__init__(dim, num_heads, mlp_dim, mlp_ratio, dropout, attn_drop, act, norm_eps, norm_first)
        self._residuals(2, drop_path)

    def forward(self, x: Tensor, pos: Tensor | None = None, key_padding_mask: Tensor | None = None,
                rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Args: x (B, N, D); pos (B|1, N, D) added to q/k; key_padding_mask (B, N); rope for q/k.

        Returns: (B, N, D).
        """
        kw = dict(key_padding_mask=key_padding_mask, rope=rope)
        if self.norm_first:
            h = self.norm1(x)
            qk = _with_pos(h, pos)
            x = x + self.drop_path1(self.attn(qk, qk, h, **kw))
            return x + self.drop_path2(self.mlp(self.norm2(x)))
        qk = _with_pos(x, pos)
        x = self.norm1(x + self.drop_path1(self.attn(qk, qk, x, **kw)))
        return self.norm2(x + self.drop_path2(self.mlp(x)))


class DecoderBlock(_BlockBase):
    """Self-attention -> cross-attention to memory -> MLP. Arguments as :class:`EncoderBlock`."""
    def __init__(self, dim: int, num_heads: int, mlp_dim: int | None = None, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0, norm_first: bool = True,
                 act: str = "gelu", norm_eps: float = 1e-6) -> None:
        super().__init__(dim, num_heads, mlp_dim, mlp_ratio, dropout, attn_drop, act, norm_eps, norm_first)
        self.cross_attn = MultiheadAttention(dim, num_heads, attn_drop=attn_drop, proj_drop=dropout)
        self.norm3 = nn.LayerNorm(dim, eps=norm_eps)
        self._residuals(3, drop_path)

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        *,
        query_pos: Tensor | None = None,
        memory_pos: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        self_attn_mask: Tensor | None = None,
        is_causal: bool = False,
        cache: KVCache | None = None,
        cross_cache: KVCache | None = None,
        cross_attn_kwargs: dict | None = None,
        memory_groups: int = 1,
    ) -> Tensor:
        """Decode one layer.

        Args:
            tgt: (B, Q, D) queries / token states.
            memory: (B, N, D) encoder tokens.
            query_pos: (B|1, Q, D) added to q/k of self-attention and to q of cross-attention.
            memory_pos: (B|1, N, D) added to the cross-attention keys.
            tgt_key_padding_mask: (B, Q or cached length + Q) True = padding token.
            memory_key_padding_mask: (B, N) True = padding.
            self_attn_mask: bool (Q, Q) or broadcastable, True = masked out.
            cache, cross_cache: KV caches for incremental decoding (self: growing, cross: static).
            cross_attn_kwargs: extra keyword arguments for a replaced ``cross_attn`` module.
            memory_groups: g > 1 = every g consecutive rows of ``tgt`` (B = M*g) read the same row of an (M, N, D)
                ``memory``, projected once per memory row. Not with caches or ``cross_attn_kwargs``.

        Returns:
            (B, Q, D).
        """
        sa = dict(key_padding_mask=tgt_key_padding_mask, attn_mask=self_attn_mask, is_causal=is_causal, cache=cache)
        ca = dict(key_padding_mask=memory_key_padding_mask, cache=cross_cache, **(cross_attn_kwargs or {}))
        if memory_groups > 1 and (cross_cache is not None or cross_attn_kwargs):
            raise ValueError("memory_groups > 1 works without a cross-attention cache or extra arguments")
        if self.norm_first:
            h = self.norm1(tgt)
            qk = _with_pos(h, query_pos)
            tgt = tgt + self.drop_path1(self.attn(qk, qk, h, **sa))
            h = self.norm2(tgt)
            tgt = tgt + self.drop_path2(self._cross(_with_pos(h, query_pos), memory, memory_pos, memory_groups, ca))
            return tgt + self.drop_path3(self.mlp(self.norm3(tgt)))
        qk = _with_pos(tgt, query_pos)
        tgt = self.norm1(tgt + self.drop_path1(self.attn(qk, qk, tgt, **sa)))
        tgt = self.norm2(tgt + self.drop_path2(self._cross(_with_pos(tgt, query_pos), memory, memory_pos,
                                                           memory_groups, ca)))
        return self.norm3(tgt + self.drop_path3(self.mlp(tgt)))

    def _cross(self, q: Tensor, memory: Tensor, memory_pos: Tensor | None, groups: int, ca: dict) -> Tensor:
        """Cross-attention of (B, Q, D) queries to (B / groups, N, D) memory -> (B, Q, D)."""
        B, Q, D = q.shape
        if groups > 1:  # cross-attention has no mask between queries: g rows' queries can share one memory row
            q = q.reshape(B // groups, groups * Q, D)  # (M, g*Q, D)
        out = self.cross_attn(q, _with_pos(memory, memory_pos), memory, **ca)
        return out.reshape(B, Q, D)
