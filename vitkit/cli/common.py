"""What the commands share: the parser with its examples, argument types, FOLDER/--ckpt, the options for reading a
folder of images, --attention, the checks of FOLDER/--ckpt/output folders before any checkpoint is loaded, loading
the task's predictor, and the report of the images that failed.

The parser pieces import nothing heavy, so that ``vitkit COMMAND --help`` needs no torch: the helpers that run
after parsing import torch, the data readers and :func:`vitkit.load` when they are called."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MAX_LISTED_FAILURES = 10  # failed files listed on stderr; the rest are counted


def command_parser(prog: str, doc: str, examples: str) -> argparse.ArgumentParser:
    """A command's parser: the first paragraph of its module docstring ``doc`` above the options, ``examples``
    (with ``{prog}`` filled in) below them."""
    return argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=examples.format(prog=prog))


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


def add_folder_and_checkpoint(parser: argparse.ArgumentParser, task: str) -> None:
    """FOLDER and --ckpt (required), a ``task`` ("detection", "captioning") checkpoint."""
    parser.add_argument("folder", help="folder of images")
    parser.add_argument("--ckpt", required=True, help=f"{task} checkpoint (.ckpt written by vitkit train)")


def add_attention_option(parser: argparse.ArgumentParser, per: str) -> None:
    """--attention OUTDIR: one cross-attention picture per image, with a panel per ``per`` ("box", "token")."""
    parser.add_argument("--attention", metavar="OUTDIR",
                        help=f"write each image's per-{per} cross-attention picture (PNG) under OUTDIR")


def add_folder_options(parser: argparse.ArgumentParser) -> None:
    """--batch-size, --recursive/--no-recursive, --device, --workers."""
    parser.add_argument("--batch-size", type=positive, default=8, help="images per forward pass (default: 8)")
    parser.add_argument("--recursive", action=argparse.BooleanOptionalAction, default=True,
                        help="include subfolders (default: yes)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu or cuda")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="auto: bf16 where the device runs it fast (CPU with AVX-512 bf16 / AMX, CUDA), else fp32 "
                             "(default: auto; see vitkit.kernels.precision)")
    parser.add_argument("--workers", type=non_negative, default=2,
                        help="worker processes decoding images (default: 2; 0 = in the main process)")


def fail(prog: str, message: str) -> int:
    """Print a usage error and return exit status 2."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def folder_usage_error(folder: Path | None, ckpt: Path, picture_dirs: dict[str, str | None]) -> str | None:
    """The first problem with FOLDER, --ckpt and picture output folders (flag -> path), or None."""
    from vitkit.data.folder import overwrite_error  # heavy: imported after parsing so --help stays fast

    if folder is not None:
        if not folder.exists():
            return f"image folder not found: {folder}"
        if not folder.is_dir():
            return f"not a folder: {folder}; pass the folder that holds the images"
    if not ckpt.is_file():
        return f"checkpoint not found: {ckpt}"
    errors = [overwrite_error(flag, path, folder) for flag, path in picture_dirs.items()] if folder else []
    return next((e for e in errors if e is not None), None)


def load_predictor(prog: str, ckpt: Path, args: argparse.Namespace, expected: type, task: str) -> Any | int:
    """``vitkit.load(ckpt)`` on ``args.device`` at ``args.precision``, or the exit status 2 (the reason printed) when
    that fails or the checkpoint is not of the ``task`` the command runs (the predictor is not an ``expected``)."""
    from vitkit.data.folder import resolve_device  # heavy: imported after parsing so --help stays fast
    from vitkit.io.load import load

    try:
        predictor = load(ckpt, map_location=resolve_device(args.device), precision=args.precision)
    except (FileNotFoundError, ValueError) as err:
        return fail(prog, str(err))
    if not isinstance(predictor, expected):
        return fail(prog, f"{ckpt} is a {type(predictor).__name__} checkpoint, not a {task} one")
    return predictor


def attention_pictures(model: Any, folder: Path, out_dir: str, failures: Sequence[tuple[str, str]],
                       **options: Any) -> list[tuple[str, str]]:
    """Write the --attention pictures (:func:`vitkit.cli.attention_folders.attention_folder`; ``options`` are its
    keyword arguments)
    and return ``failures`` plus the images that failed there and not before (one entry per file).

    Raises:
        ValueError: as :func:`~vitkit.cli.attention_folders.attention_folder` (e.g. OUTDIR is the image folder).
    """
    from vitkit.cli.attention_folders import attention_folder  # heavy: imported after parsing so --help stays fast

    _, attention_failures = attention_folder(model, folder, out_dir, progress=sys.stderr.isatty(), **options)
    known = {f for f, _ in failures}
    return [*failures, *((f, reason) for f, reason in attention_failures if f not in known)]


def report_failures(prog: str, failures: Sequence[tuple[str, str]], see: str, *, folder: Path, recursive: bool,
                    no_images: bool) -> None:
    """On stderr: a warning when the folder held no image (``no_images``), then the first
    :data:`MAX_LISTED_FAILURES` failures and how many more there are (``see``: where they are all recorded)."""
    if no_images:
        from vitkit.data.folder import IMAGE_EXTENSIONS  # heavy: imported after parsing so --help stays fast

        print(f"{prog}: warning: no image files in {folder} (looked for {' '.join(e[1:] for e in IMAGE_EXTENSIONS)}"
              f"{'' if recursive else ', subfolders not searched'})", file=sys.stderr)
    for file, reason in failures[:MAX_LISTED_FAILURES]:
        print(f"{prog}: failed: {file}: {reason}", file=sys.stderr)
    if len(failures) > MAX_LISTED_FAILURES:
        print(f"{prog}: ... and {len(failures) - MAX_LISTED_FAILURES} more failures; see {see}", file=sys.stderr)
