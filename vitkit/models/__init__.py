"""Task-agnostic models: the ViT encoder and the shared transformer decoder."""

from vitkit.models.decoder import TransformerDecoder
from vitkit.models.encoder import EncoderOutput, ViTEncoder

__all__ = ["EncoderOutput", "TransformerDecoder", "ViTEncoder"]
