"""vitkit: a vision-transformer toolkit (ViT encoders, DETR-style detection, captioning) on PyTorch."""

__version__ = "0.1.0"


def load(path, map_location="cpu"):
    """Load a training checkpoint as a ready model; see :func:`vitkit.api.load`."""
    from vitkit.api import load as _load

    return _load(path, map_location=map_location)


__all__ = ["__version__", "load"]
