"""Folders of images for inference tools: listing, robust RGB decoding, a Dataset that never stops on a bad file.

:func:`load_rgb` turns any file Pillow can read into an upright 8-bit RGB image (first frame, EXIF orientation
applied, 16-bit and float data scaled rather than clipped, transparency composited over white) or raises
:class:`ImageReadError` naming the file. :class:`ImageFolder` turns that error into a record, so one unreadable
file costs one output line, and :func:`collate_folder` batches the readable ones with a padding mask.

The folder tools (``tools/caption.py``, ``tools/detect.py``) share the rest of their file handling from here:
:func:`folder_batches` (a DataLoader yielding ``(files, good, errors)`` per batch in listing order),
:func:`run_isolated` (a batch that fails is retried image by image, so one image costs only its own record),
:func:`resolve_device` and :func:`progress_bar`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, ImageOps
from rich import progress as rp
from rich.console import Console
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms.v2 import functional as F

from vitkit.data.collate import pad_images

if TYPE_CHECKING:
    from rich.progress import Progress

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageReadError(OSError):
    """An image file could not be read or decoded.

    Attributes:
        path: the file.
        reason: what went wrong (the underlying error's type and message).
    """
    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[Path, str]]:  # picklable across DataLoader workers
        return type(self), (self.path, self.reason)


def list_images(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Image files under ``folder``, by extension (:data:`IMAGE_EXTENSIONS`, any letter case).

    Args:
        folder: the folder to scan.
        recursive: also scan subfolders (symbolic links to folders are not followed).

    Returns:
        Paths relative to ``folder``, sorted by their POSIX string (the same order on every OS and run).

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        NotADirectoryError: ``folder`` is a file.
    """
    root = Path(folder)
    if not root.exists():
        raise FileNotFoundError(f"image folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}; pass the folder that holds the images")
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        if not recursive:
            dirnames.clear()
        base = Path(dirpath).relative_to(root)
        found.extend(base / name for name in filenames if name.lower().endswith(IMAGE_EXTENSIONS))
    return sorted(found, key=lambda p: p.as_posix())


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB (see :func:`load_rgb` for the rules)."""
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
    """Open an image file as an upright 8-bit RGB image.

    - Multi-frame files (GIF, TIFF, WebP animations): the first frame.
    - EXIF orientation is applied (a photo taken in portrait loads in portrait); a broken EXIF block is ignored.
      With ``size_hint``, the stored orientation is kept when it has that (width, height) and the rotated one does
      not (some COCO files annotate images in stored pixel order).
    - Modes: L, P, 1, CMYK, YCbCr convert as Pillow does; transparency (LA, RGBA, P with a transparent colour)
      is composited over white; 16-bit data (``I;16*``) is scaled by 255/65535 (65535 -> 255, 32768 -> 128)
      instead of being clipped at 255; ``I`` (32-bit) is taken as 8-bit data if it lies in [0, 255], as 16-bit
      if in [0, 65535], else stretched min-max; ``F`` is scaled by 255 if it lies in [0, 1], else clipped.
    - The pixels are decoded here (``load()``), so truncated and corrupt files fail now, not later. (Pillow's
      global ``ImageFile.LOAD_TRUNCATED_IMAGES = True``, if something sets it, makes truncated files load.)

    Args:
        path: the image file.
        size_hint: (width, height) the caller's annotations use, or None.

    Returns:
        A PIL image in mode RGB, independent of the file (which is closed).

    Raises:
        ImageReadError: the file is missing, unreadable, not an image, corrupt or truncated, or in a mode that
            cannot become RGB; ``reason`` gives the underlying error.
    """
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
            return _to_rgb(img)
    except MemoryError:
        raise
    except Exception as exc:  # decoders raise OSError, ValueError, SyntaxError, EOFError, struct.error, ...
        raise ImageReadError(path, f"{type(exc).__name__}: {exc}") from exc


class ImageFolder(Dataset):
    """The images of a folder for inference; an unreadable file becomes an error record, not an exception.

    Args:
        folder: folder to read (see :func:`list_images`).
        transform: callable from an RGB PIL image to a (3, H, W) tensor; default: uint8 tensor of the pixels.
        recursive: include subfolders.
        size_hints: {file (relative POSIX path): (width, height)} passed to :func:`load_rgb` as ``size_hint``
            (an annotation file's sizes, so an image is decoded in the orientation its boxes refer to).

    Each item is a dict: ``file`` (path relative to ``folder``, POSIX), ``image`` ((3, H, W) tensor from
    ``transform``, or None), ``size`` ((h, w) of the upright decoded image before ``transform``, or None) and
    ``error`` (None, or why the file could not be used: unreadable, or ``transform`` failed).
    """
    def __init__(self, folder: str | os.PathLike, transform: Callable[[Image.Image], Tensor] | None = None,
                 recursive: bool = True, size_hints: Mapping[str, tuple[int, int]] | None = None) -> None:
        self.root = Path(folder)
        self.files = list_images(self.root, recursive=recursive)
        self.transform = transform
        self.size_hints = dict(size_hints or {})

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rel = self.files[index]
        record: dict[str, Any] = {"file": rel.as_posix(), "image": None, "size": None, "error": None}
        try:
            img = load_rgb(self.root / rel, size_hint=self.size_hints.get(record["file"]))
        except ImageReadError as exc:
            record["error"] = exc.reason
            return record
        record["size"] = (img.height, img.width)
        try:
            record["image"] = self.transform(img) if self.transform is not None else F.pil_to_tensor(img)
        except Exception as exc:
            record["error"] = f"transform failed: {type(exc).__name__}: {exc}"
        return record

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root='{self.root}', images={len(self)})"


def collate_folder(batch: Sequence[dict[str, Any]],
                   pad_to_multiple: int = 1) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Collate :class:`ImageFolder` records: batch the readable images, pass the error records through.

    Use ``functools.partial(collate_folder, pad_to_multiple=16)`` for a DataLoader that pads to a multiple.

    Args:
        batch: records from :class:`ImageFolder`.
        pad_to_multiple: round the padded height and width up to a multiple of this.

    Returns:
        ``(good, errors)``. ``good`` is None when no record in the batch is readable, else a dict: ``images``
        (B, 3, Hmax, Wmax) zero-padded bottom/right, ``mask`` (B, Hmax, Wmax) bool with True = padding,
        ``files`` (B names), ``sizes`` (B (h, w) decoded sizes). ``errors`` are the records with an error,
        in batch order.
    """
    good = [r for r in batch if r["error"] is None]
    errors = [r for r in batch if r["error"] is not None]
    if not good:
        return None, errors
    images, mask = pad_images([r["image"] for r in good], pad_to_multiple=pad_to_multiple)
    return {"images": images, "mask": mask, "files": [r["file"] for r in good],
            "sizes": [r["size"] for r in good]}, errors


# ------------------------------------------------------------------------------------------------ folder tools
def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else the CPU; ``"cpu"``; ``"cuda"`` / ``"cuda:N"`` (must be available).

    Raises:
        ValueError: an unknown name, or CUDA asked for but not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r}; use auto, cpu or cuda") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here (torch {torch.__version__}); "
                         "use --device cpu or auto")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {name!r}; use auto, cpu or cuda")
    return device


def progress_bar(label: str, enabled: bool) -> Progress:
    """A rich progress bar on stderr (``label``, bar, done/total, elapsed, remaining); a no-op when disabled."""
    return rp.Progress(rp.TextColumn(label), rp.BarColumn(), rp.MofNCompleteColumn(), rp.TimeElapsedColumn(),
                       rp.TimeRemainingColumn(), console=Console(stderr=True), disable=not enabled)


def _collate_with_files(batch: list[dict[str, Any]]) -> tuple[list[str], dict[str, Any] | None, list[dict[str, Any]]]:
    """:func:`collate_folder` plus the batch's files in order (module level: picklable for workers)."""
    good, errors = collate_folder(batch)
    return [r["file"] for r in batch], good, errors


def folder_batches(dataset: ImageFolder, indices: Sequence[int] | None = None, batch_size: int = 8,
                   num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over ``dataset`` (or the items ``indices``) in listing order.

    Each batch is ``(files, good, errors)``: the batch's files in order, :func:`collate_folder`'s batch of the
    readable images (None when none is) and the error records.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"number of workers must be >= 0, got {num_workers}")
    data = dataset if indices is None else Subset(dataset, list(indices))
    return DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=_collate_with_files, pin_memory=pin_memory)


def unpadded(images: Tensor, mask: Tensor, i: int) -> tuple[Tensor, Tensor]:
    """Image i of a padded batch cropped to its own size: (1, C, h, w) and its (1, h, w) mask."""
    valid = ~mask[i]  # (H, W)
    h, w = int(valid.any(dim=1).sum()), int(valid.any(dim=0).sum())
    return images[i: i + 1, :, :h, :w], mask[i: i + 1, :h, :w]


def run_isolated(fn: Callable[[Tensor, Tensor, list[str]], list[Any]], good: dict[str, Any],
                 what: str) -> dict[str, Any]:
    """Run ``fn(images, mask, files)`` on a batch from :func:`collate_folder`; if it raises (e.g. out of memory),
    run it on each image alone, so one image the model cannot handle costs only its own result.

    Args:
        fn: maps a batch (B, 3, H, W), its mask (B, H, W) and its B files to B results.
        good: the ``good`` batch of :func:`collate_folder` (``images``, ``mask``, ``files``).
        what: the step's name for error messages (e.g. "detection").

    Returns:
        {file: result}, or {file: ``"<what> failed: <error>"`` (a str)} for an image that failed alone; check
        with :func:`isinstance` against the result type.
    """
    images, mask, files = good["images"], good["mask"], good["files"]
    try:
        return dict(zip(files, fn(images, mask, files), strict=True))
    except Exception as err:  # the model failed on the batch: isolate the culprit
        if isinstance(err, torch.cuda.OutOfMemoryError):
            torch.cuda.empty_cache()
        if len(files) == 1:
            return {files[0]: f"{what} failed: {type(err).__name__}: {err}"}
    out: dict[str, Any] = {}
    for i, file in enumerate(files):
        image, image_mask = unpadded(images, mask, i)
        out.update(run_isolated(fn, {"images": image, "mask": image_mask, "files": [file]}, what))
    return out
