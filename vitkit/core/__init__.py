"""The task-free core: the ViT encoder (its own or timm's weights) and the cross-attention transformer decoder."""

from vitkit.core.decoder import TransformerDecoder
from vitkit.core.encoder import EncoderOutput, TimmViTEncoder, ViTEncoder
from vitkit.core.pyramid import CoarserLevel, FinerLevel

__all__ = ["CoarserLevel", "EncoderOutput", "FinerLevel", "TimmViTEncoder", "TransformerDecoder", "ViTEncoder"]
