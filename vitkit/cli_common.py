"""What the folder CLIs (tools/caption.py, tools/detect.py, tools/export.py) share: argument types, the options
for reading a folder of images, and the checks of FOLDER/--ckpt/output folders before any heavy import."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def positive(value: str) -> int:
    """argparse type: an int >= 1."""
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def non_negative(value: str) -> int:
    """argparse type: an int >= 0."""
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {n}")
    return n


def probability(value: str) -> float:
    """argparse type: a float in [0, 1]."""
    p = float(value)
    if not 0.0 <= p <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {p}")
    return p


def add_folder_options(parser: argparse.ArgumentParser) -> None:
    """--batch-size, --recursive/--no-recursive, --device, --workers."""
    parser.add_argument("--batch-size", type=positive, default=8, help="images per forward pass (default: 8)")
    parser.add_argument("--recursive", action=argparse.BooleanOptionalAction, default=True,
                        help="include subfolders (default: yes)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu or cuda")
    parser.add_argument("--workers", type=non_negative, default=2,
                        help="worker processes decoding images (default: 2; 0 = in the main process)")


def fail(prog: str, message: str) -> int:
    """Print a usage error and return exit status 2."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def folder_usage_error(folder: Path | None, ckpt: Path, picture_dirs: dict[str, str | None]) -> str | None:
    """The first problem with FOLDER, --ckpt and picture output folders (flag -> path), or None."""
    if folder is not None:
        if not folder.exists():
            return f"image folder not found: {folder}"
        if not folder.is_dir():
            return f"not a folder: {folder}; pass the folder that holds the images"
    if not ckpt.is_file():
        return f"checkpoint not found: {ckpt}"
    for flag, path in picture_dirs.items():
        if folder is not None and path is not None and Path(path).resolve() == folder.resolve():
            return f"{flag} {path} is the image folder: the pictures would overwrite the images"
    return None
