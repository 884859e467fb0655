"""Models: the task-agnostic ViT encoder and transformer decoder, and the task models built on them."""

from vitkit.models.captioner import Captioner, DecodeState
from vitkit.models.decoder import TransformerDecoder
from vitkit.models.detr import DETR
from vitkit.models.encoder import EncoderOutput, TimmViTEncoder, ViTEncoder

__all__ = ["DETR", "Captioner", "DecodeState", "EncoderOutput", "TimmViTEncoder", "TransformerDecoder", "ViTEncoder"]
