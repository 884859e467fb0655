"""vitkit: a vision-transformer toolkit (ViT encoders, DETR-style detection, captioning) on PyTorch."""

from vitkit.io.load import load
from vitkit.version import __version__

__all__ = ["__version__", "load"]
