"""Pure nn.Modules with no task knowledge."""

from vitkit.layers.attention import KVCache, MultiheadAttention
from vitkit.layers.blocks import DecoderBlock, EncoderBlock
from vitkit.layers.patch_embed import BackbonePatchEmbed, PatchEmbed
from vitkit.layers.pos_embed import (
    LearnedPositionEncoding2D,
    RoPE2D,
    SinePositionEncoding2D,
    apply_rope,
    resample_grid,
)

__all__ = [
    "BackbonePatchEmbed",
    "DecoderBlock",
    "EncoderBlock",
    "KVCache",
    "LearnedPositionEncoding2D",
    "MultiheadAttention",
    "PatchEmbed",
    "RoPE2D",
    "SinePositionEncoding2D",
    "apply_rope",
    "resample_grid",
]
