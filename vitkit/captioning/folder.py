"""Caption every image of a folder into a JSON Lines or CSV file, or one .txt per image, resumably; the engine of
``tools/caption.py``.

- Files: :func:`vitkit.data.folder.list_images` (image extensions in any letter case, sorted by POSIX path,
  optionally recursive); decoding by :func:`~vitkit.data.images.load_rgb` (EXIF orientation, any mode to RGB,
  first frame) and the pipeline's preprocessing (:class:`~vitkit.captioning.preprocess.CaptionPreprocess`, as in
  ``CaptionPipeline.caption(path)``) run in DataLoader workers.
- Output, one record per image in listing order: ``{"file": path relative to the folder (POSIX), "caption": str,
  "score": float}``, or ``{"file": ..., "error": reason}`` for a file that could not be read or captioned (the
  run goes on). CSV has the columns ``file,caption,score,error``.
- Resuming: records already in the output file are read first. Images captioned there are skipped; images whose
  record is an error are retried: their error records are removed (the file is rewritten atomically) and the new
  outcome is appended, so every image has at most one record. A partly written last line (a killed run) is
  dropped. Records of files that are no longer listed are kept untouched.
- Records are appended and flushed batch by batch, so a killed run loses at most the batch in flight.
- ``fmt="txt"`` writes one caption file per image instead (``a/cat.jpg`` -> ``a/cat.txt`` under the output folder)
  and the error records into ``captions_errors.jsonl`` there: :mod:`vitkit.captioning.txt_output`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitkit.captioning.predictor import CaptionPipeline
from vitkit.captioning.txt_output import TxtOutput, file_record
from vitkit.data.folder import ImageFolder, folder_batches, progress_bar, resolve_device, run_isolated
from vitkit.utils.files import atomic_write

__all__ = ["CaptionOutput", "FolderCaptionSummary", "caption_folder", "output_format", "resolve_device",
           "resume_output"]

OUTPUT_FORMATS = ("jsonl", "csv", "txt")
CSV_COLUMNS = ("file", "caption", "score", "error")


@dataclass
class FolderCaptionSummary:
    """What a :func:`caption_folder` run did.

    Attributes:
        captioned: images captioned in this run.
        failed: images that got an error record in this run.
        skipped: listed images already captioned in the output file (not redone).
        seconds: wall time of the run.
        out: the output file (the output folder for txt).
        failures: (file, reason) of each failed image, in listing order.
    """
    captioned: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    out: Path = Path()
    failures: list[tuple[str, str]] = field(default_factory=list)

    def line(self) -> str:
        """The one-line summary the CLI prints last."""
        return (f"captioned {self.captioned}, failed {self.failed}, skipped {self.skipped} (already done) "
                f"in {self.seconds:.1f} s; output: {self.out}")


def output_format(out: str | os.PathLike, fmt: str | None = None) -> str:
    """The output format: ``fmt`` when given, else from the file suffix (``.csv`` -> csv, anything else jsonl; txt
    is never inferred)."""
    if fmt is None:
        return "csv" if Path(out).suffix.lower() == ".csv" else "jsonl"
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"output format must be one of {'|'.join(OUTPUT_FORMATS)}, got {fmt!r}")
    return fmt


# ------------------------------------------------------------------------------------------------ output file
def _is_done(record: dict[str, Any]) -> bool:
    return isinstance(record.get("caption"), str) and not record.get("error")


def _format_records(records: Sequence[dict[str, Any]], fmt: str) -> str:
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for r in records:
        score = r.get("score")
        writer.writerow([r["file"], r.get("caption", ""), "" if score is None else repr(score), r.get("error", "")])
    return buf.getvalue()


def _csv_header() -> str:
    return ",".join(CSV_COLUMNS) + "\n"


def _parse_jsonl(text: str, out: Path) -> tuple[list[dict[str, Any]], bool]:
    """Records of a JSON Lines output, and whether the file needs rewriting (its last line is unterminated:
    dropped when partial, kept when it is a whole record)."""
    lines = text.split("\n")
    tail = lines.pop()  # "" when the file ends with a newline
    records, partial = [], False
    for n, line in enumerate([*lines, tail], start=1):
        if not line.strip():
            continue
        record = file_record(line)
        if record is None:
            if n == len(lines) + 1:  # the unterminated last line of a killed run
                partial = True
                continue
            raise ValueError(f"{out}: line {n} is not a caption record ({line[:80]!r}); is --out the right file? "
                             "Fix or remove it (or pass --overwrite to start afresh)")
        records.append(record)
    return records, partial or bool(tail)


def _parse_csv(text: str, out: Path) -> tuple[list[dict[str, Any]], bool]:
    """Records of a CSV output and whether its last line was partial (dropped)."""
    if not text.startswith(_csv_header()):
        if _csv_header().startswith(text):  # killed while writing the header
            return [], True
        raise ValueError(f"{out}: not a caption CSV (its first line is not '{','.join(CSV_COLUMNS)}'); is --out the "
                         "right file, or --format wrong? Fix or remove it (or pass --overwrite to start afresh)")
    body = text[len(_csv_header()):]
    partial = bool(body) and not body.endswith("\n")
    if partial:  # an unterminated last row may be cut anywhere (even inside the score): drop it
        body = body[: body.rfind("\n") + 1]
    records = []
    for n, row in enumerate(csv.reader(io.StringIO(body)), start=2):
        if not row:
            continue
        if len(row) != len(CSV_COLUMNS):
            raise ValueError(f"{out}: line {n} has {len(row)} columns, expected {len(CSV_COLUMNS)} "
                             f"({','.join(CSV_COLUMNS)}); fix or remove the file (or pass --overwrite)")
        file, caption, score, error = row
        if error:
            records.append({"file": file, "error": error})
            continue
        try:
            records.append({"file": file, "caption": caption, "score": float(score)})
        except ValueError as err:
            raise ValueError(f"{out}: line {n} has a score that is not a number: {score!r}") from err
    return records, partial


class CaptionOutput:
    """The output file of :func:`caption_folder`: reads earlier records, rewrites, appends.

    Args:
        path: the file (created with its parent folders when missing).
        fmt: "jsonl" or "csv".
    """
    def __init__(self, path: str | os.PathLike, fmt: str) -> None:
        self.path, self.fmt = Path(path), output_format(path, fmt)
        if self.fmt == "txt":
            raise ValueError("CaptionOutput writes one file (jsonl or csv); txt output is a TxtOutput")
        if self.path.is_dir():
            raise ValueError(f"--out {self.path} is a folder; give a file name, e.g. {self.path / 'captions.jsonl'}")

    def _open(self, mode: str):
        return open(self.path, mode, encoding="utf-8", errors="surrogateescape", newline="")

    def read(self) -> tuple[list[dict[str, Any]], bool]:
        """Earlier records, and whether the file ended in a partial line (dropped from the records).

        Raises:
            ValueError: the file is not a caption output of this format (a bad line other than the last one).
        """
        if not self.path.is_file():
            return [], False
        with self._open("r") as f:
            text = f.read()
        return (_parse_jsonl if self.fmt == "jsonl" else _parse_csv)(text, self.path)

    def rewrite(self, records: Sequence[dict[str, Any]]) -> None:
        """Replace the file's content with ``records`` (atomically: a temporary file, then a rename)."""
        text = (_csv_header() if self.fmt == "csv" else "") + _format_records(records, self.fmt)
        atomic_write(self.path, text.encode("utf-8", errors="surrogateescape"))

    def start(self) -> None:
        """Create the file (with the CSV header) when it does not exist or is empty."""
        if not self.path.is_file() or self.path.stat().st_size == 0:
            self.rewrite([])

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Append records and flush them to the OS."""
        with self._open("a") as f:
            f.write(_format_records(records, self.fmt))
            f.flush()


# ------------------------------------------------------------------------------------------------ captioning
def _caption_batch(pipeline: CaptionPipeline, good: dict[str, Any],
                   options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Records for the readable images of a batch; if the batch fails (e.g. out of memory) each image is tried
    alone, so one image that cannot be captioned costs only its own record."""

    def caption(images, mask, files: list[str]) -> list[dict[str, Any]]:
        outs = pipeline.generate(images, mask, **options)
        return [{"file": f, "caption": o["caption"], "score": round(o["score"], 6)}
                for f, o in zip(files, outs, strict=True)]

    results = run_isolated(caption, good, "captioning")
    return {f: {"file": f, "error": r} if isinstance(r, str) else r for f, r in results.items()}


def resume_output(output: CaptionOutput, files: list[str], overwrite: bool,
                  is_done: Callable[[dict[str, Any]], bool] = _is_done) -> list[int]:
    """Prepare ``output`` for a run over ``files``: read its earlier records (none with ``overwrite``), drop the
    error records of the files to redo, repeated successes and a partial last line, and create it if missing.
    ``is_done`` tells a finished record (default: a caption and no error; ``vitkit describe`` passes its own).

    Returns:
        The indices into ``files`` still to caption (not captioned in ``output``), in listing order.
    """
    previous, partial = ([], False) if overwrite else output.read()
    done = {r["file"] for r in previous if is_done(r)}
    todo = [i for i, f in enumerate(files) if f not in done]
    retry = {files[i] for i in todo}
    kept, seen = [], set()
    for r in previous:  # drop retried files' errors and repeated successes; keep records of unlisted files
        if r["file"] in retry or (is_done(r) and r["file"] in seen):
            continue
        if is_done(r):
            seen.add(r["file"])
        kept.append(r)
    if overwrite or partial or len(kept) != len(previous):
        output.rewrite(kept)
    output.start()
    return todo


def _open_output(out: str | os.PathLike, fmt: str | None, files: list[str],
                 overwrite: bool) -> tuple[CaptionOutput | TxtOutput, list[int]]:
    """The output of a run over ``files``, prepared to resume, and the indices of the files still to caption."""
    if output_format(out, fmt) == "txt":
        output = TxtOutput(out)
        return output, output.resume(files, overwrite)
    output = CaptionOutput(out, fmt)
    return output, resume_output(output, files, overwrite)


def caption_folder(
    pipeline: CaptionPipeline,
    folder: str | os.PathLike,
    out: str | os.PathLike,
    *,
    fmt: str | None = None,
    batch_size: int = 8,
    recursive: bool = True,
    num_workers: int = 0,
    overwrite: bool = False,
    progress: bool = False,
    **generation: Any,
) -> FolderCaptionSummary:
    """Caption the images of ``folder`` into ``out``, skipping those already captioned there.

    Args:
        pipeline: from :func:`vitkit.load` (on the device to run on).
        folder: the image folder.
        out: JSON Lines or CSV file; created, or resumed when it exists (see the module docstring). For txt, the
            folder the .txt files go under (the image folder itself puts each beside its image).
        fmt: "jsonl", "csv" or "txt"; None = from the suffix of ``out`` (``.csv`` -> csv, else jsonl).
        batch_size: images per forward pass.
        recursive: include subfolders.
        num_workers: DataLoader worker processes decoding and preprocessing images (0 = in this process).
        overwrite: start a fresh output file (txt: rewrite every .txt) instead of resuming.
        progress: show a progress bar on stderr.
        **generation: options of :meth:`CaptionPipeline.generate` (method, num_beams, max_length, ...); None
            values take the pipeline's defaults.

    Returns:
        A :class:`FolderCaptionSummary`.

    Raises:
        FileNotFoundError / NotADirectoryError: ``folder`` is missing or a file.
        ValueError: a bad option, ``out`` exists but is not a caption output of this format, or (txt) two images
            would share a .txt.
    """
    start = time.perf_counter()
    if batch_size < 1:  # checked before the output file is touched
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"number of workers must be >= 0, got {num_workers}")
    options = pipeline.generation_options(**generation)
    dataset = ImageFolder(folder, transform=pipeline.transform, recursive=recursive)
    files = [p.as_posix() for p in dataset.files]
    output, todo = _open_output(out, fmt, files, overwrite)
    summary = FolderCaptionSummary(skipped=len(files) - len(todo), out=output.path)
    if todo:
        loader = folder_batches(dataset, todo, batch_size=batch_size, num_workers=num_workers,
                                pin_memory=pipeline.device.type == "cuda")
        with progress_bar("captioning", progress) as bar:
            task = bar.add_task("captioning", total=len(todo))
            for batch_files, good, errors in loader:
                records = {r["file"]: {"file": r["file"], "error": r["error"]} for r in errors}
                if good is not None:
                    records.update(_caption_batch(pipeline, good, options))
                ordered = [records[f] for f in batch_files]
                output.append(ordered)
                for r in ordered:
                    if "error" in r:
                        summary.failed += 1
                        summary.failures.append((r["file"], r["error"]))
                    else:
                        summary.captioned += 1
                bar.advance(task, len(batch_files))
    summary.seconds = time.perf_counter() - start
    return summary
