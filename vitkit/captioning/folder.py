"""Caption every image of a folder into a JSON Lines or CSV file, or one .txt per image, resumably.

Records: ``{"file": path relative to the folder (POSIX), "caption": str, "score": float}`` or
``{"file": ..., "error": reason}``; CSV columns ``file,caption,score,error``. ``fmt="txt"``: ``a/b/cat.jpg`` gets
``a/b/cat.txt`` (one line, line breaks as spaces, UTF-8, newline-terminated, skipped when it exists unless
``overwrite``); failures go to :data:`ERRORS_NAME` in the output folder. Resuming skips captioned images.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from vitkit.captioning.predictor import CaptionPipeline
from vitkit.data.folder import ImageFolder
from vitkit.data.folder_runner import FolderOutput, FolderSummary, FolderTask, RecordFile, failure_log, run_folder
from vitkit.utils.files import atomic_write

OUTPUT_FORMATS = ("jsonl", "csv", "txt")
CSV_COLUMNS = ("file", "caption", "score", "error")
ERRORS_NAME = "captions_errors.jsonl"
FILE_SUFFIXES = (".jsonl", ".csv", ".txt")  # an --out that does not exist yet and ends so is a file name, not a folder


def output_format(out: str | os.PathLike, fmt: str | None = None) -> str:
    """The output format: ``fmt`` when given, else from the file suffix (``.csv`` -> csv, anything else jsonl; txt
    is never inferred)."""
    if fmt is None:
        return "csv" if Path(out).suffix.lower() == ".csv" else "jsonl"
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"output format must be one of {'|'.join(OUTPUT_FORMATS)}, got {fmt!r}")
    return fmt


def _is_done(record: dict[str, Any]) -> bool:
    return isinstance(record.get("caption"), str) and not record.get("error")


class CaptionOutput(RecordFile):
    """The JSON Lines or CSV output file of :func:`caption_folder`.

    Args:
        path: the file (created with its parent folders when missing).
        fmt: "jsonl" or "csv"; None: from the suffix.

    Raises:
        ValueError: ``fmt`` is txt, or ``path`` is a folder.
    """
    def __init__(self, path: str | os.PathLike, fmt: str | None) -> None:
        self.fmt = output_format(path, fmt)
        if self.fmt == "txt":
            raise ValueError("CaptionOutput writes one file (jsonl or csv); txt output is a TxtOutput")
        super().__init__(path, _is_done, "caption", "captions.jsonl")
        self.header = ",".join(CSV_COLUMNS) + "\n" if self.fmt == "csv" else ""

    def format(self, records: Sequence[dict[str, Any]]) -> bytes:
        """JSON Lines, or CSV rows (``score`` as Python's repr, empty cells for what a record lacks)."""
        if self.fmt == "jsonl":
            return super().format(records)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        for r in records:
            score = r.get("score")
            writer.writerow([r["file"], r.get("caption", ""), "" if score is None else repr(score), r.get("error", "")])
        return buf.getvalue().encode("utf-8", "surrogateescape")

    def parse(self, text: str) -> tuple[list[dict[str, Any]], bool]:
        """Records of the file, and whether it needs rewriting (partial last line dropped); ValueError when the file is
        not a caption output of this format.
        """
        if self.fmt == "jsonl":
            return super().parse(text)
        if not text.startswith(self.header):
            if self.header.startswith(text):  # killed while writing the header
                return [], True
            raise ValueError(f"{self.path}: not a caption CSV (its first line is not '{','.join(CSV_COLUMNS)}'); is "
                             "--out the right file, or --format wrong? Fix or remove it (or pass --overwrite to start "
                             "afresh)")
        body = text[len(self.header):]
        partial = bool(body) and not body.endswith("\n")
        if partial:  # an unterminated last row may be cut anywhere (even inside the score): drop it
            body = body[: body.rfind("\n") + 1]
        return [self._csv_record(n, row) for n, row in enumerate(csv.reader(io.StringIO(body)), start=2) if row], \
            partial

    def _csv_record(self, n: int, row: list[str]) -> dict[str, Any]:
        if len(row) != len(CSV_COLUMNS):
            raise ValueError(f"{self.path}: line {n} has {len(row)} columns, expected {len(CSV_COLUMNS)} "
                             f"({','.join(CSV_COLUMNS)}); fix or remove the file (or pass --overwrite)")
        file, caption, score, error = row
        if error:
            return {"file": file, "error": error}
        try:
            return {"file": file, "caption": caption, "score": float(score)}
        except ValueError as err:
            raise ValueError(f"{self.path}: line {n} has a score that is not a number: {score!r}") from err


# ------------------------------------------------------------------------------------------------ one .txt per image
def txt_name(file: str) -> str:
    """The caption file of an image, relative like it (POSIX): ``a/b/cat.jpg`` -> ``a/b/cat.txt``."""
    return PurePosixPath(file).with_suffix(".txt").as_posix()


def collision_error(files: Sequence[str]) -> str | None:
    """The error when two of ``files`` map to the same .txt (naming the first such pair and how many more), else
    None."""
    owner: dict[str, str] = {}
    clashes = [(owner[txt_name(f)], f, txt_name(f)) for f in files if owner.setdefault(txt_name(f), f) != f]
    if not clashes:
        return None
    first, second, name = clashes[0]
    more = f" (and {len(clashes) - 1} more such pairs)" if len(clashes) > 1 else ""
    return (f"--format txt: {first} and {second} would both be captioned into {name}{more}; rename one of them "
            "or use --format jsonl")


class TxtOutput(FolderOutput):
    """The .txt files of :func:`caption_folder` with ``fmt="txt"`` under ``path``, the output folder.

    Raises:
        ValueError: ``path`` is an existing file, or does not exist and is named like one (.jsonl, .csv, .txt).
    """
    resumable = True

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path, Path(path) / ERRORS_NAME)
        self.log = failure_log(self.failures_file)
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"--out {self.path} is a file; with --format txt, --out is the folder the .txt files go "
                             "under (default: the image folder)")
        if not self.path.exists() and self.path.suffix.lower() in FILE_SUFFIXES:
            raise ValueError(f"--out {self.path} looks like a file name; with --format txt, --out is the folder the "
                             f".txt files go under (default: the image folder), e.g. {self.path.with_suffix('')}")

    def target(self, file: str) -> Path:
        """The .txt of ``file`` (an image path relative to the folder)."""
        return self.path / txt_name(file)

    def open(self, files: list[str], overwrite: bool) -> tuple[list[int], dict[str, str]]:
        """Check for shared names, drop the error records of listed files (all with ``overwrite``).

        Returns:
            The indices into ``files`` still to caption, and no rejected files.

        Raises:
            ValueError: two files map to one .txt, or the errors file is not one of ours.
        """
        error = collision_error(files)
        if error is not None:
            raise ValueError(error)
        self.log.open(files, overwrite)
        return [i for i, f in enumerate(files) if overwrite or not self.target(f).is_file()], {}

    def write(self, records: list[dict[str, Any]]) -> None:
        """Write the .txt of each captioned record (atomically); record the failed ones in the errors file."""
        for r in records:
            if "error" in r:
                self.target(r["file"]).unlink(missing_ok=True)  # exists only with overwrite: now stale
            else:
                atomic_write(self.target(r["file"]), (" ".join(r["caption"].splitlines()) + "\n").encode("utf-8"))
        self.log.write([r for r in records if "error" in r])


# ------------------------------------------------------------------------------------------------ captioning
def caption_task(pipeline: CaptionPipeline, **generation: Any) -> FolderTask:
    """Captioning as a :class:`~vitkit.data.folder_runner.FolderTask`: records ``{"file", "caption", "score"}``
    (``generation``: options of :meth:`CaptionPipeline.generate`; None values take the pipeline's defaults)."""
    options = pipeline.generation_options(**generation)

    def predict(batch: dict[str, Any]) -> list[dict[str, Any]]:
        outs = pipeline.generate(batch["images"], batch["mask"], **options)
        return [{"file": f, "caption": o["caption"], "score": round(o["score"], 6)}
                for f, o in zip(batch["files"], outs, strict=True)]

    return FolderTask("captioned", "captioning", predict)


def caption_folder(pipeline: CaptionPipeline, folder: str | os.PathLike, out: str | os.PathLike, *,
                   fmt: str | None = None, batch_size: int = 8, recursive: bool = True, num_workers: int = 0,
                   overwrite: bool = False, progress: bool = False, **generation: Any) -> FolderSummary:
    """Caption the images of ``folder`` into ``out``, skipping those already captioned there.

    Args:
        pipeline: from :func:`vitkit.load`.
        folder: the image folder.
        out: JSON Lines or CSV file, created or resumed; for txt, the folder the .txt files go under.
        fmt: "jsonl", "csv" or "txt"; None = from the suffix of ``out`` (``.csv`` -> csv, else jsonl).
        batch_size, recursive, num_workers, progress: as :func:`vitkit.data.folder_runner.run_folder`.
        overwrite: start a fresh output file (txt: rewrite every .txt) instead of resuming.
        **generation: options of :meth:`CaptionPipeline.generate`; None values take the pipeline's defaults.

    Returns:
        A :class:`~vitkit.data.folder_runner.FolderSummary` (``failures_file``: the output, or the txt errors file).

    Raises:
        FileNotFoundError / NotADirectoryError: ``folder`` is missing or a file.
        ValueError: a bad option, ``out`` exists but is not a caption output of this format, or (txt) two images
            would share a .txt.
    """
    task = caption_task(pipeline, **generation)
    dataset = ImageFolder(folder, transform=pipeline.transform, recursive=recursive)
    output = TxtOutput(out) if output_format(out, fmt) == "txt" else CaptionOutput(out, fmt)
    return run_folder(task, dataset, output, batch_size=batch_size, num_workers=num_workers, overwrite=overwrite,
                      progress=progress, pin_memory=pipeline.device.type == "cuda")
