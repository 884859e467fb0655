"""Folders of images for inference tools: listing, a Dataset that never stops on a bad file, batching, image ids.

An unreadable file becomes an error record (:class:`ImageFolder`); :func:`collate_folder` batches the readable
images with a padding mask; :func:`folder_batches`, :func:`run_isolated` and :func:`folder_image_ids` serve
:mod:`vitkit.data.folder_runner`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from rich import progress as rp
from rich.console import Console
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms.v2 import functional as F

from vitkit.data.collate import pad_images
from vitkit.data.images import ImageReadError, load_rgb

if TYPE_CHECKING:
    from rich.progress import Progress

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def list_images(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Image files under ``folder``, by extension (:data:`IMAGE_EXTENSIONS`, any letter case).

    Args:
        recursive: also scan subfolders (symbolic links to folders are not followed).

    Returns:
        Paths relative to ``folder``, sorted by their POSIX string.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        NotADirectoryError: ``folder`` is a file."""
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


class ImageFolder(Dataset):
    """The images of a folder for inference; an unreadable file becomes an error record, not an exception.

    Args:
        transform: RGB PIL image -> (3, H, W) tensor; default: uint8 tensor of the pixels.
        size_hints: {file (relative POSIX path): (width, height)} passed to
            :func:`~vitkit.data.images.load_rgb` as ``size_hint``.

    Each item is a dict: ``file`` (relative POSIX path), ``image`` ((3, H, W) tensor, or None), ``size`` ((h, w) of
    the upright decoded image before ``transform``, or None) and ``error`` (None, or why the file could not be used)."""
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

    Args:
        pad_to_multiple: round the padded height and width up to a multiple of this.

    Returns:
        ``(good, errors)``. ``good`` is None when no record is readable, else a dict: ``images`` (B, 3, Hmax, Wmax)
        zero-padded bottom/right, ``mask`` (B, Hmax, Wmax) bool, True = padding, ``files`` (B names), ``sizes``
        (B decoded (h, w)). ``errors``: the records with an error, in batch order."""
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


def check_loader_options(batch_size: int, num_workers: int) -> None:
    """Raise ValueError for a batch size below 1 or a negative number of DataLoader workers."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"number of workers must be >= 0, got {num_workers}")


def check_picture_options(folder: str | os.PathLike, draw_dir: str | os.PathLike | None, threshold: float,
                          name: str = "threshold") -> None:
    """Raise ValueError for a ``threshold`` (called ``name`` in the message) outside [0, 1], or a --draw folder
    ``draw_dir`` that is the image folder (:func:`overwrite_error`)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {threshold}")
    error = overwrite_error("--draw", draw_dir, folder)
    if error is not None:
        raise ValueError(error)


def overwrite_error(flag: str, out_dir: str | os.PathLike | None, folder: str | os.PathLike) -> str | None:
    """The error when pictures written under ``out_dir`` (given as option ``flag``) would replace the images of
    ``folder``; None when they would not (or no ``out_dir`` is given)."""
    if out_dir is not None and Path(out_dir).resolve() == Path(folder).resolve():
        return f"{flag} {out_dir} is the image folder: the pictures would overwrite the images"
    return None


def folder_batches(dataset: ImageFolder, indices: Sequence[int] | None = None, batch_size: int = 8,
                   num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over ``dataset`` (or the items ``indices``) in listing order, yielding ``(files, good, errors)``.

    Raises:
        ValueError: a batch size below 1 or a negative worker count."""
    check_loader_options(batch_size, num_workers)
    data = dataset if indices is None else Subset(dataset, list(indices))
    return DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=_collate_with_files, pin_memory=pin_memory)


def unpadded(images: Tensor, mask: Tensor, i: int) -> tuple[Tensor, Tensor]:
    """Image i of a padded batch cropped to its own size: (1, C, h, w) and its (1, h, w) mask."""
    valid = ~mask[i]  # (H, W)
    h, w = int(valid.any(dim=1).sum()), int(valid.any(dim=0).sum())
    return images[i: i + 1, :, :h, :w], mask[i: i + 1, :h, :w]


def run_isolated(fn: Callable[[dict[str, Any]], list[Any]], good: dict[str, Any], what: str) -> dict[str, Any]:
    """Run ``fn(batch)`` on a :func:`collate_folder` batch; if it raises, run it on each image alone.

    Args:
        fn: maps a batch (``images`` (B, 3, H, W), ``mask`` (B, H, W), ``files``, ``sizes``) to B results.
        what: the step's name for error messages (e.g. "detecting").

    Returns:
        {file: result}, or {file: ``"<what> failed: <error>"`` (a str)} for an image that failed alone."""
    files = good["files"]
    try:
        return dict(zip(files, fn(good), strict=True))
    except Exception as err:  # the model failed on the batch: isolate the culprit
        if isinstance(err, torch.cuda.OutOfMemoryError):
            torch.cuda.empty_cache()
        if len(files) == 1:
            return {files[0]: f"{what} failed: {type(err).__name__}: {err}"}
    out: dict[str, Any] = {}
    for i, (file, size) in enumerate(zip(files, good["sizes"], strict=True)):
        image, image_mask = unpadded(good["images"], good["mask"], i)
        out.update(run_isolated(fn, {"images": image, "mask": image_mask, "files": [file], "sizes": [size]}, what))
    return out


# ------------------------------------------------------------------------------------------------ image ids
def read_json(path: str | os.PathLike, what: str) -> Any:
    """The JSON content of the file ``path`` (``what`` it is, for errors: "annotation file").

    Raises:
        FileNotFoundError: no file ("<what> not found: <path>"); ValueError: not JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def match_files(files: Sequence[str], names: Mapping[str, Any]) -> dict[str, str]:
    """Listed file -> its name among ``names`` (e.g. an annotation file's ``file_name``s): the relative path, else
    the bare file name when no other listed file has that name. Files without a match are left out."""
    counts: dict[str, int] = {}
    for f in files:
        counts[Path(f).name] = counts.get(Path(f).name, 0) + 1
    out = {}
    for f in files:
        if f in names:
            out[f] = f
        elif Path(f).name in names and counts[Path(f).name] == 1:
            out[f] = Path(f).name
    return out


def folder_image_ids(files: Sequence[str], annotations: str | os.PathLike | None = None
                     ) -> tuple[dict[str, int], dict[str, tuple[int, int]], set[int] | None]:
    """The COCO image id of each listed file (relative POSIX paths, listing order).

    With ``annotations`` (a COCO instances file): its ids for the files it lists, their (width, height) and the
    file's category ids. Without: the files numbered 1, 2, ... in listing order (unreadable ones included), no sizes,
    and None.

    Raises:
        FileNotFoundError: no annotation file.
        ValueError: not JSON, or no ``images`` list of entries with ``id`` and ``file_name``."""
    if annotations is None:
        return {f: i for i, f in enumerate(files, start=1)}, {}, None
    data = read_json(annotations, "annotation file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{annotations}: not a COCO annotation file (no 'images' list)")
    ids, sizes = {}, {}
    for i, im in enumerate(data["images"]):
        if not (isinstance(im, dict) and isinstance(im.get("file_name"), str) and isinstance(im.get("id"), int)):
            raise ValueError(f"{annotations}: images[{i}] needs an integer 'id' and a 'file_name'")
        name = Path(im["file_name"]).as_posix().removeprefix("./")
        ids[name] = im["id"]
        if isinstance(im.get("width"), int) and isinstance(im.get("height"), int):
            sizes[name] = (im["width"], im["height"])
    cats = {c["id"] for c in data.get("categories") or [] if isinstance(c, dict) and isinstance(c.get("id"), int)}
    matched = match_files(files, ids)
    return {f: ids[n] for f, n in matched.items()}, {f: sizes[n] for f, n in matched.items() if n in sizes}, cats
