"""What the commands share: parser pieces (importing nothing heavy, so ``--help`` needs no torch), argument types,
the checks before a checkpoint is loaded, loading the predictor, and running a folder command to its end.

Folder commands' exit status (:func:`finish`): 0 when every listed image is done, 3 when any failed, 2 for a usage
error, 130 when interrupted."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
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


def folder_predictor(prog: str, args: argparse.Namespace, expected: type, task: str, pictures: dict[str, str | None],
                     files: dict[str, str | None] | None = None) -> Any | int:
    """The predictor of a folder command (``vitkit.load(args.ckpt)`` on ``args.device`` at ``args.precision``), or exit
    status 2 (the first problem printed). Checks FOLDER, --ckpt, the ``pictures`` folders (flag -> path) and the input
    ``files`` (what -> path or None) first, then that the predictor is an ``expected`` of the ``task``."""
    from vitkit.data.folder import resolve_device  # heavy: imported after parsing so --help stays fast
    from vitkit.io.load import load

    ckpt = Path(args.ckpt)
    error = folder_usage_error(Path(args.folder), ckpt, pictures) or next(
        (f"{what} not found: {path}" for what, path in (files or {}).items() if path and not Path(path).is_file()),
        None)
    if error:
        return fail(prog, error)
    try:
        predictor = load(ckpt, map_location=resolve_device(args.device), precision=args.precision)
    except (FileNotFoundError, ValueError) as err:
        return fail(prog, str(err))
    if not isinstance(predictor, expected):
        return fail(prog, f"{ckpt} is a {type(predictor).__name__} checkpoint, not a {task} one")
    return predictor


def generation_options(args: argparse.Namespace) -> dict[str, Any]:
    """The caption decoding options of --beam and --max-length (None: the checkpoint's default)."""
    return {"method": "beam" if args.beam else None, "num_beams": args.beam, "max_length": args.max_length}


def run_folder_command(prog: str, run: Callable[[], Any], out: object, interrupted: str) -> Any | int:
    """``run()`` (returning its summary), or the exit status: 2 for a usage error (reason printed), 130 when interrupted
    (``interrupted`` printed)."""
    try:
        return run()
    except (FileNotFoundError, NotADirectoryError, ValueError) as err:
        return fail(prog, str(err))
    except OSError as err:
        return fail(prog, f"{err.filename or out}: {err.strerror or err}")
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {interrupted}", file=sys.stderr)
        return 130


def attention_pictures(model: Any, folder: Path, out_dir: str, **options: Any) -> list[tuple[str, str]]:
    """Write the --attention pictures (``options``: keyword arguments of
    :func:`~vitkit.cli.attention_folders.attention_folder`) and return the images that failed there.

    Raises:
        ValueError: as :func:`~vitkit.cli.attention_folders.attention_folder` (e.g. OUTDIR is the image folder)."""
    from vitkit.cli.attention_folders import attention_folder  # heavy: imported after parsing so --help stays fast

    return attention_folder(model, folder, out_dir, progress=sys.stderr.isatty(), **options)[1]


def finish(prog: str, summary: Any, folder: Path, recursive: bool,
           attention: Callable[[], list[tuple[str, str]]] | None = None) -> int:
    """End a folder command: print the warnings, run ``attention`` if given, list the first :data:`MAX_LISTED_FAILURES`
    failures on stderr (and where all are listed), print ``summary.line()`` last.

    Returns:
        The exit status: 0 when nothing failed, 3 when an image failed (in the run or its pictures), 2 when the
        attention pictures cannot be written at all."""
    for warning in summary.warnings:
        print(f"{prog}: warning: {warning}", file=sys.stderr)
    failures = list(summary.failures)
    if attention:
        try:
            known = {f for f, _ in failures}
            failures += [(f, reason) for f, reason in attention() if f not in known]
        except ValueError as err:
            return fail(prog, str(err))
    if summary.total == 0:
        from vitkit.data.folder import IMAGE_EXTENSIONS  # heavy: imported after parsing so --help stays fast

        print(f"{prog}: warning: no image files in {folder} (looked for {' '.join(e[1:] for e in IMAGE_EXTENSIONS)}"
              f"{'' if recursive else ', subfolders not searched'})", file=sys.stderr)
    for file, reason in failures[:MAX_LISTED_FAILURES]:
        print(f"{prog}: failed: {file}: {reason}", file=sys.stderr)
    if len(failures) > MAX_LISTED_FAILURES:
        print(f"{prog}: ... and {len(failures) - MAX_LISTED_FAILURES} more failures; see {summary.failures_file}",
              file=sys.stderr)
    print(summary.line())
    return 3 if failures else 0
