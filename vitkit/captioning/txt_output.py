"""One caption file per image (``vitkit caption --format txt``), the layout that training sets of generative models
use: ``a/b/cat.jpg`` gets ``a/b/cat.txt`` holding its caption.

- Where: under an output folder at the image's relative path with the suffix replaced by ``.txt``. The CLI's default
  output folder is the image folder itself (each .txt lies beside its image); ``--out DIR`` mirrors the folder tree
  under DIR. A .txt can never replace an image (``.txt`` is not an image extension), so writing into the image
  folder is allowed.
- Content: the caption on one line (line breaks inside it become spaces; the tokenizer never makes any), ending in a
  newline, UTF-8. Each file is written atomically (:func:`vitkit.utils.files.atomic_write`): an interrupted run leaves
  the old file or none, never half of one.
- Resuming: an image whose .txt exists is skipped (counted as skipped); with ``overwrite`` every image is redone.
- Errors: an image that cannot be read or captioned gets no .txt (with ``overwrite``, its old one is removed) and a
  record ``{"file": relative path, "error": reason}`` in :data:`ERRORS_NAME` in the output folder. That file is
  rewritten atomically after every batch with a failure; a run first drops the records of the images it lists (they
  are skipped as done or retried, and a retry that fails records anew), keeps those of images it does not list
  (a run without subfolders, say; ``overwrite`` drops them too), and removes the file when no record is left.
- Two images that would share a .txt (``cat.jpg`` and ``cat.png`` in one folder) are an error naming both, raised
  before anything is written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from vitkit.utils.files import atomic_write

__all__ = ["ERRORS_NAME", "TxtOutput", "errors_file", "file_record", "txt_name"]

ERRORS_NAME = "captions_errors.jsonl"
FILE_SUFFIXES = (".jsonl", ".csv", ".txt")  # an --out that does not exist yet and ends so is a file name, not a folder


def txt_name(file: str) -> str:
    """The caption file of an image, relative like it (POSIX): ``a/b/cat.jpg`` -> ``a/b/cat.txt``."""
    return PurePosixPath(file).with_suffix(".txt").as_posix()


def errors_file(out_dir: str | os.PathLike) -> Path:
    """Where the error records of a txt run into ``out_dir`` go."""
    return Path(out_dir) / ERRORS_NAME


def collision_error(files: Sequence[str]) -> str | None:
    """The error when two of ``files`` map to the same .txt (naming the first such pair and how many more), else
    None."""
    owner: dict[str, str] = {}
    clashes = []
    for f in files:
        name = txt_name(f)
        if name in owner:
            clashes.append((owner[name], f, name))
        else:
            owner[name] = f
    if not clashes:
        return None
    first, second, name = clashes[0]
    more = f" (and {len(clashes) - 1} more such pairs)" if len(clashes) > 1 else ""
    return (f"--format txt: {first} and {second} would both be captioned into {name}{more}; rename one of them "
            "or use --format jsonl")


def file_record(line: str) -> dict[str, Any] | None:
    """A JSON Lines record of a caption output (a JSON object with a string ``"file"``), or None for anything else."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("file"), str) else None


def _read_errors(path: Path) -> list[dict[str, str]]:
    """The records of an errors file (written whole and atomically, so every line is complete)."""
    if not path.is_file():
        return []
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="surrogateescape").splitlines(), start=1):
        if not line.strip():
            continue
        record = file_record(line)
        if record is None or not isinstance(record.get("error"), str):
            raise ValueError(f"{path}: line {n} is not an error record ({line[:80]!r}); fix or remove the file "
                             "(or pass --overwrite to start afresh)")
        records.append({"file": record["file"], "error": record["error"]})
    return records


class TxtOutput:
    """The .txt files of :func:`~vitkit.captioning.folder.caption_folder` with ``fmt="txt"`` (see the module
    docstring): :meth:`resume`, then :meth:`append` batch by batch.

    Args:
        path: the output folder (created when the first file is written).

    Raises:
        ValueError: ``path`` is an existing file, or does not exist and is named like one (.jsonl, .csv, .txt).
    """
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.errors_path = errors_file(self.path)
        self.errors: list[dict[str, str]] = []
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"--out {self.path} is a file; with --format txt, --out is the folder the .txt files go "
                             "under (default: the image folder)")
        if not self.path.exists() and self.path.suffix.lower() in FILE_SUFFIXES:
            raise ValueError(f"--out {self.path} looks like a file name; with --format txt, --out is the folder the "
                             f".txt files go under (default: the image folder), e.g. {self.path.with_suffix('')}")

    def target(self, file: str) -> Path:
        """The .txt of ``file`` (an image path relative to the folder)."""
        return self.path / txt_name(file)

    def resume(self, files: Sequence[str], overwrite: bool) -> list[int]:
        """Prepare a run over ``files`` (relative POSIX paths): check for shared names, drop the error records of
        listed files (all records with ``overwrite``).

        Returns:
            The indices into ``files`` still to caption (no .txt yet; all with ``overwrite``), in listing order.

        Raises:
            ValueError: two files map to one .txt, or the errors file is not one of ours.
        """
        error = collision_error(files)
        if error is not None:
            raise ValueError(error)
        previous = [] if overwrite else _read_errors(self.errors_path)
        listed = set(files)
        self.errors = [r for r in previous if r["file"] not in listed]
        if overwrite or len(self.errors) != len(previous):
            self._write_errors()
        return [i for i, f in enumerate(files) if overwrite or not self.target(f).is_file()]

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Write the .txt of each captioned record (atomically); record the failed ones in the errors file."""
        failed = False
        for r in records:
            if "error" in r:
                self.target(r["file"]).unlink(missing_ok=True)  # exists only with overwrite: now stale
                self.errors.append({"file": r["file"], "error": r["error"]})
                failed = True
            else:
                line = " ".join(r["caption"].splitlines())
                atomic_write(self.target(r["file"]), (line + "\n").encode("utf-8"))
        if failed:
            self._write_errors()

    def _write_errors(self) -> None:
        if not self.errors:
            self.errors_path.unlink(missing_ok=True)
            return
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.errors)
        atomic_write(self.errors_path, text.encode("utf-8", errors="surrogateescape"))
