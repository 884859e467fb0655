"""One runner for the folder commands (``vitkit detect``, ``caption``, ``describe``): list, batch, read, run, write,
resume, summarise. A task supplies what differs, a :class:`FolderTask` and a :class:`FolderOutput`; :func:`run_folder`
does the rest.

- **Files**: the images of an :class:`~vitkit.data.folder.ImageFolder` in listing order, decoded and preprocessed in
  DataLoader workers (:func:`~vitkit.data.folder.folder_batches`). An unreadable file becomes a failure with its
  reason and the run goes on.
- **Records**: dicts with a ``"file"`` (the path relative to the folder, POSIX). ``FolderTask.predict`` maps a
  batch to one record per image; if it raises (e.g. out of memory), each image is run alone
  (:func:`~vitkit.data.folder.run_isolated`), so one image costs only its own record. A failure is
  ``{"file", "error"}``, plus ``"size"`` (the decoded (h, w)) when the image was read; ``FolderTask.draw`` failing
  on a record makes it one.
- **Output**: ``FolderOutput.open`` says which images are still to do (resuming) and which fail without a run;
  ``write`` takes each batch's records in listing order, failures included; ``close`` ends the run (not called when
  the run is interrupted). :class:`RecordFile` is the resumable one-record-per-line file (JSON Lines here), also
  the :func:`failure_log` kept beside an output.
- **Summary**: one :class:`FolderSummary` for every task, with one :meth:`FolderSummary.line`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitkit.data.folder import ImageFolder, check_loader_options, folder_batches, progress_bar, run_isolated
from vitkit.utils.files import atomic_write

Record = dict[str, Any]


@dataclass(frozen=True)
class FolderTask:
    """What a task does to a folder's images.

    Attributes:
        verb: the summary's first word ("detected").
        step: the progress bar's label; also names a failed model call ("detecting failed: RuntimeError: ...").
        predict: a batch (``images`` (B, 3, H, W), ``mask`` (B, H, W) True = padding, ``files`` and ``sizes``: B
            names and decoded (h, w)) -> B records in order; a record with an ``"error"`` is a failure.
        draw: draws a finished record's picture; returns None, or why drawing failed (the record becomes a
            failure). None: nothing is drawn.
        items: (record key, name): the summary counts ``len(record[key])`` over the finished records and shows it
            as ``(N name)``; None: no count.
    """
    verb: str
    step: str
    predict: Callable[[dict[str, Any]], list[Record]]
    draw: Callable[[Record], str | None] | None = None
    items: tuple[str, str] | None = None


class FolderOutput:
    """How a run's records are written. This base is not resumable (every image is run); subclasses write.

    Args:
        path: the output (a file, or a folder of files) the summary names.
        failures_file: the file listing the failures (default: ``path``).
    """
    resumable = False  # whether a re-run skips the images done before (the summary then counts them as skipped)

    def __init__(self, path: str | os.PathLike, failures_file: str | os.PathLike | None = None) -> None:
        self.path = Path(path)
        self.failures_file = Path(failures_file if failures_file is not None else path)

    def open(self, files: list[str], overwrite: bool) -> tuple[list[int], dict[str, str]]:
        """Prepare a run over ``files`` (``overwrite``: start afresh instead of resuming).

        Returns:
            The indices into ``files`` to run, in listing order, and {file: reason} of files that fail without a
            run (recorded by the output itself); the rest are skipped as done.
        """
        return list(range(len(files))), {}

    def write(self, records: list[Record]) -> None:
        """Write one batch's records (listing order, failures included)."""
        raise NotImplementedError

    def close(self) -> None:
        """End the run: write what is written at the end."""


@dataclass
class FolderSummary:
    """What a :func:`run_folder` run did.

    Attributes:
        verb: the line's first word; resumable: the line counts skipped images; item_name: what ``items`` counts
            ("" = not shown).
        done: images finished in this run; failed: images that failed in this run (``len(failures)``); skipped:
            listed images already done in the output (not redone); items: items (boxes, regions) written.
        seconds: wall time; out: the output; failures_file: the file that lists the failures.
        failures: (file, reason) of each failed image, in listing order.
        warnings: things the user should know (e.g. category ids an annotation file does not have).
    """
    verb: str
    resumable: bool = False
    item_name: str = ""
    done: int = 0
    failed: int = 0
    skipped: int = 0
    items: int = 0
    seconds: float = 0.0
    out: Path = Path()
    failures_file: Path = Path()
    failures: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        """The listed images: done, failed and skipped."""
        return self.done + self.failed + self.skipped

    def line(self) -> str:
        """The one-line summary the commands print last: ``VERB N, failed M[, skipped K (already done)][ (I items)]
        in S s; output: OUT``."""
        skipped = f", skipped {self.skipped} (already done)" if self.resumable else ""
        items = f" ({self.items} {self.item_name})" if self.item_name else ""
        counts = f"{self.verb} {self.done}, failed {self.failed}{skipped}{items}"
        return f"{counts} in {self.seconds:.1f} s; output: {self.out}"

    def add(self, records: list[Record], items: str | None) -> None:
        """Count ``records`` (``items``: the record key whose length counts items)."""
        for r in records:
            if "error" in r:
                self.failures.append((r["file"], r["error"]))
            else:
                self.done += 1
                self.items += len(r[items]) if items else 0


def _failure(file: str, error: str, size: tuple[int, int] | None = None) -> Record:
    return {"file": file, "error": error} if size is None else {"file": file, "error": error, "size": size}


def _run_batch(task: FolderTask, good: dict[str, Any]) -> dict[str, Record]:
    """The records of a batch's readable images: predicted (image by image when the batch fails), then drawn."""
    sizes = dict(zip(good["files"], good["sizes"], strict=True))
    records = {}
    for file, result in run_isolated(task.predict, good, task.step).items():
        if isinstance(result, str):  # the model failed on this image alone
            result = _failure(file, result, sizes[file])
        elif "error" not in result and task.draw is not None:
            error = task.draw(result)
            result = result if error is None else _failure(file, error, sizes[file])
        records[file] = result
    return records


def run_folder(task: FolderTask, dataset: ImageFolder, output: FolderOutput, *, batch_size: int = 8,
               num_workers: int = 0, overwrite: bool = False, progress: bool = False, pin_memory: bool = False,
               warnings: Sequence[str] = ()) -> FolderSummary:
    """Run ``task`` over the images of ``dataset`` into ``output`` (see the module docstring).

    Args:
        task: what becomes of each batch. dataset: the folder, with the task's preprocessing as its transform.
        output: where the records go; opened (resumed) before the first batch, closed after the last.
        batch_size: images per model call. num_workers: DataLoader workers decoding images (0 = this process).
        overwrite: start the output afresh instead of resuming. progress: a progress bar on stderr.
        pin_memory: pin batches (for a CUDA model). warnings: carried into the summary.

    Returns:
        A :class:`FolderSummary`.

    Raises:
        ValueError: a batch size below 1 or a negative worker count (before the output is touched), or as
            ``output.open``.
    """
    start = time.perf_counter()
    check_loader_options(batch_size, num_workers)  # before the output is touched
    files = [p.as_posix() for p in dataset.files]
    todo, rejected = output.open(files, overwrite)
    summary = FolderSummary(task.verb, output.resumable, task.items[1] if task.items else "",
                            skipped=len(files) - len(todo) - len(rejected), out=output.path,
                            failures_file=output.failures_file, warnings=list(warnings))
    summary.add([_failure(f, e) for f, e in rejected.items()], None)
    items = task.items[0] if task.items else None
    if todo:
        with progress_bar(task.step, progress) as bar:
            bar_task = bar.add_task(task.step, total=len(todo))
            for batch_files, good, errors in folder_batches(dataset, todo, batch_size=batch_size,
                                                            num_workers=num_workers, pin_memory=pin_memory):
                records = {r["file"]: _failure(r["file"], r["error"], r["size"]) for r in errors}
                if good is not None:
                    records.update(_run_batch(task, good))
                batch = [records[f] for f in batch_files]
                output.write(batch)
                summary.add(batch, items)
                bar.advance(bar_task, len(batch_files))
    output.close()
    order = {f: i for i, f in enumerate(files)}
    summary.failures.sort(key=lambda failure: order[failure[0]])
    summary.failed = len(summary.failures)
    summary.seconds = time.perf_counter() - start
    return summary


# ------------------------------------------------------------------------------------------------ record files
def output_file(out: str | os.PathLike, example: str) -> Path:
    """``out`` as a Path, checked to be usable as an output file (``example``: a name suggested in the error).

    Raises:
        ValueError: ``out`` is a folder.
    """
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a file name, e.g. {out / example}")
    return out


def _jsonl(records: Sequence[Record]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8", "surrogateescape")


class RecordFile(FolderOutput):
    """A resumable output file of one record per line: JSON Lines here; a subclass may set :attr:`header` and
    change :meth:`parse` and :meth:`format` (CSV).

    - Resuming: the earlier records are read first. Images with a done record are skipped; the others are redone:
      their error records are removed (the file is rewritten atomically) and the new outcome appended, so every
      image has at most one record. A partly written last line (a killed run) is dropped. Records of files that
      are no longer listed are kept.
    - Records are appended and flushed batch by batch, so a killed run loses at most the batch in flight.
    - Failures are written as ``{"file", "error"}`` records, or, with ``failures``, into that :func:`failure_log`
      instead (the file then holds only finished records).

    Args:
        path: the file (created with its parent folders).
        is_done: whether an earlier record is finished (its image is skipped).
        what: the kind of record named in errors ("caption": "line 3 is not a caption record").
        example: a file name suggested when ``path`` is a folder.
        failures: the failure log's path, or None.
        keep_empty: keep (create) the file when it holds no record; False: remove it then.

    Raises:
        ValueError: ``path`` is a folder.
    """
    resumable = True
    header = ""  # the file's first line (CSV column names), "" for none

    def __init__(self, path: str | os.PathLike, is_done: Callable[[Record], bool], what: str, example: str,
                 failures: str | os.PathLike | None = None, keep_empty: bool = True) -> None:
        super().__init__(output_file(path, example), failures)
        self.is_done, self.what, self.keep_empty = is_done, what, keep_empty
        self.log = failure_log(failures) if failures is not None else None

    def parse(self, text: str) -> tuple[list[Record], bool]:
        """The records (JSON objects with a string ``"file"``) of the file's text, and whether the file needs
        rewriting (its last line is unterminated: dropped when partial, kept when it is a whole record).

        Raises:
            ValueError: a line other than the last is not a record.
        """
        lines = text.split("\n")
        tail = lines.pop()  # "" when the file ends with a newline
        records, partial = [], False
        for n, line in enumerate([*lines, tail], start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not (isinstance(record, dict) and isinstance(record.get("file"), str)):
                if n == len(lines) + 1:  # the unterminated last line of a killed run
                    partial = True
                    continue
                raise ValueError(f"{self.path}: line {n} is not a {self.what} record ({line[:80]!r}); is --out the "
                                 "right file? Fix or remove it (or pass --overwrite to start afresh)")
            records.append(record)
        return records, partial or bool(tail)

    def format(self, records: Sequence[Record]) -> bytes:
        """The lines of ``records`` (a failure as ``{"file", "error"}``)."""
        return _jsonl([{"file": r["file"], "error": r["error"]} if "error" in r else r for r in records])

    def open(self, files: list[str], overwrite: bool) -> tuple[list[int], dict[str, str]]:
        """Read the earlier records (none with ``overwrite``); drop the error records of the files to redo,
        repeated successes and a partial last line (the file rewritten atomically); create the file if missing.

        Returns:
            The indices into ``files`` not done in the file, in listing order, and no rejected files.
        """
        previous, partial = ([], False) if overwrite or not self.path.is_file() else \
            self.parse(self.path.read_bytes().decode("utf-8", "surrogateescape"))
        done = {r["file"] for r in previous if self.is_done(r)}
        todo = [i for i, f in enumerate(files) if f not in done]
        retry = {files[i] for i in todo}
        kept, seen = [], set()
        for r in previous:  # drop retried files' errors and repeated successes; keep records of unlisted files
            if r["file"] in retry or (self.is_done(r) and r["file"] in seen):
                continue
            if self.is_done(r):
                seen.add(r["file"])
            kept.append(r)
        if not (kept or self.keep_empty):
            self.path.unlink(missing_ok=True)
        elif overwrite or partial or len(kept) != len(previous) or not self.path.is_file() \
                or self.path.stat().st_size == 0:
            atomic_write(self.path, self.header.encode("utf-8") + self.format(kept))
        if self.log is not None:
            self.log.open(files, overwrite)
        return todo, {}

    def write(self, records: list[Record]) -> None:
        """Append the records and flush them to the OS (failures to the log, when there is one)."""
        if self.log is not None:
            self.log.write([r for r in records if "error" in r])
            records = [r for r in records if "error" not in r]
        if records:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as f:
                f.write(self.format(records))
                f.flush()


def failure_log(path: str | os.PathLike) -> RecordFile:
    """The ``{"file", "error"}`` lines of the images that failed and are not done yet, beside an output
    (``captions_errors.jsonl``, ``regions.errors.jsonl``): a :class:`RecordFile` in which no record is done, so a run
    drops the records of the images it lists (they are skipped as done or retried), keeps those of images it does
    not list, appends its failures batch by batch, and removes the file when it holds no record."""
    return RecordFile(path, lambda record: False, "failure", Path(path).name, keep_empty=False)
