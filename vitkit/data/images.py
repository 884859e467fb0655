"""The one image reader: any file Pillow can read -> an upright 8-bit RGB image (:func:`load_rgb`), or an
:class:`ImageReadError` naming the file; :func:`to_rgb` applies the same mode rules to images in memory."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageReadError(OSError):
    """An image file could not be read or decoded; ``path`` is the file, ``reason`` the underlying error's type
    and message."""
    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[Path, str]]:  # picklable across DataLoader workers
        return type(self), (self.path, self.reason)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB (the mode rules of :func:`load_rgb`; an RGB image is returned as is)."""
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT_MODES:
        gray = np.asarray(img).astype(np.float32) / 257.0  # 65535 -> 255, 32768 -> 127.5
        return Image.fromarray((gray + 0.5).astype(np.uint8)).convert("RGB")
    if img.mode == "I":  # 32-bit integers: 8-bit or 16-bit data stored wide, else min-max
        data = np.asarray(img).astype(np.float64)
        lo, hi = float(data.min()), float(data.max())
        if lo >= 0 and hi <= 255:
            gray = data
        elif lo >= 0 and hi <= 65535:
            gray = data / 257.0
        else:
            gray = (data - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(data)
        return Image.fromarray((gray + 0.5).astype(np.uint8)).convert("RGB")
    if img.mode == "F":  # floats: [0, 1] data scaled by 255, anything else clipped to [0, 255]
        data = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        if data.size and data.min() >= 0 and data.max() <= 1:
            data = data * 255.0
        return Image.fromarray((np.clip(data, 0, 255) + 0.5).astype(np.uint8)).convert("RGB")
    if img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")  # L, P, 1, CMYK, YCbCr, RGBX, ...


def load_rgb(path: str | os.PathLike, size_hint: tuple[int, int] | None = None) -> Image.Image:
    """Open an image file as an upright 8-bit RGB image, decoded now (a truncated or corrupt file fails here).

    The first frame of multi-frame files; EXIF orientation applied (a broken EXIF block is ignored), except that the
    stored orientation is kept when it matches ``size_hint`` (width, height) and the rotated one does not.
    Transparency is composited over white; 16-bit data is scaled by 255/65535; ``I`` (32-bit) is taken as 8-bit if in
    [0, 255], as 16-bit if in [0, 65535], else stretched min-max; ``F`` is scaled by 255 if in [0, 1], else clipped.

    Returns:
        A PIL image in mode RGB, independent of the file (which is closed).

    Raises:
        ImageReadError: the file is missing, unreadable, not an image, corrupt or truncated, or in a mode that
            cannot become RGB; ``reason`` gives the underlying error."""
    try:
        with Image.open(path) as im:
            im.seek(0)
            im.load()
            try:
                img = ImageOps.exif_transpose(im)
            except Exception:  # a malformed EXIF block: keep the stored orientation
                img = im.copy()
            if size_hint is not None and img.size != tuple(size_hint) and im.size == tuple(size_hint):
                img = im.copy()  # annotated in stored pixel order
            return to_rgb(img)
    except MemoryError:
        raise
    except Exception as exc:  # decoders raise OSError, ValueError, SyntaxError, EOFError, struct.error, ...
        raise ImageReadError(path, f"{type(exc).__name__}: {exc}") from exc


def image_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """An image file's upright (width, height) from its header, without decoding the pixels (EXIF orientations
    5-8, a quarter turn, swap the two); None when the file cannot be opened as an image."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            try:
                turned = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # the EXIF Orientation tag
            except Exception:  # a malformed EXIF block: load_rgb keeps the stored orientation too
                turned = False
    except MemoryError:
        raise
    except Exception:
        return None
    return (height, width) if turned else (width, height)
