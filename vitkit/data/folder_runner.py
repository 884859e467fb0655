"""One runner for the folder commands (``vitkit detect``, ``caption``, ``describe``): list, batch, read, run, write,
resume, summarise. A task supplies a :class:`FolderTask` and a :class:`FolderOutput`; :func:`run_folder` does the
rest. Records are dicts with a ``"file"`` (POSIX path relative to the folder); a failure is ``{"file", "error"}``,
plus ``"size"`` (decoded (h, w)) when the image was read."""

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
        predict: a batch (``images`` (B, 3, H, W), ``mask`` (B, H, W) True = padding, ``files``, ``sizes`` (h, w))
            -> B records in order; a record with an ``"error"`` is a failure.
        draw: draws a finished record's picture; returns None or why drawing failed. None: nothing is drawn.
        items: (record key, name): the summary shows ``(N name)``, N = sum of ``len(record[key])``; None: no count."""
    verb: str
    step: str
    predict: Callable[[dict[str, Any]], list[Record]]
    draw: Callable[[Record], str | None] | None = None
    items: tuple[str, str] | None = None


class FolderOutput:
    """How a run's records are written; this base is not resumable. ``failures_file`` defaults to ``path``."""
    resumable = False  # whether a re-run skips the images done before (the summary then counts them as skipped)

    def __init__(self, path: str | os.PathLike, failures_file: str | os.PathLike | None = None) -> None:
        self.path = Path(path)
        self.failures_file = Path(failures_file if failures_file is not None else path)

    def open(self, files: list[str], overwrite: bool) -> tuple[list[int], dict[str, str]]:
        """Prepare a run over ``files`` (``overwrite``: start afresh instead of resuming).

        Returns:
            The indices into ``files`` to run, in listing order, and {file: reason} of files that fail without a run."""
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
        done, failed, skipped: images finished / failed in this run / already done in the output.
        items: items (boxes, regions) written; item_name: what they are ("" = not shown).
        seconds: wall time. failures: (file, reason) per failed image, in listing order.
        warnings: things the user should know."""
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
    """Run ``task`` over the images of ``dataset`` into ``output``; a batch that raises is rerun image by image.

    Args:
        output: opened (resumed) before the first batch, closed after the last (not when interrupted).
        num_workers: DataLoader workers decoding images (0 = this process).
        overwrite: start the output afresh instead of resuming. progress: a progress bar on stderr.

    Returns:
        A :class:`FolderSummary`.

    Raises:
        ValueError: a batch size below 1 or a negative worker count (before the output is touched), or as
            ``output.open``."""
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
    """A resumable output file of one JSON record per line (a subclass may set :attr:`header`, :meth:`parse`,
    :meth:`format`).

    Resuming skips images with a done record and redoes the others (their error records are removed, the file
    rewritten atomically), so each image has at most one record; a partial last line is dropped. Records are appended
    and flushed per batch. Failures go in as ``{"file", "error"}`` records, or into the ``failures`` log if given.

    Args:
        is_done: whether an earlier record is finished (its image is skipped).
        what: the kind of record named in errors ("caption").
        example: a file name suggested when ``path`` is a folder.
        keep_empty: keep (create) the file when it holds no record; False: remove it then.

    Raises:
        ValueError: ``path`` is a folder."""
    resumable = True
    header = ""  # the file's first line (CSV column names), "" for none

    def __init__(self, path: str | os.PathLike, is_done: Callable[[Record], bool], what: str, example: str,
                 failures: str | os.PathLike | None = None, keep_empty: bool = True) -> None:
        super().__init__(output_file(path, example), failures)
        self.is_done, self.what, self.keep_empty = is_done, what, keep_empty
        self.log = failure_log(failures) if failures is not None else None

    def parse(self, text: str) -> tuple[list[Record], bool]:
        """The records (JSON objects with a string ``"file"``) of the text, and whether the file needs rewriting.

        Raises:
            ValueError: a line other than the last is not a record."""
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
        """Read the earlier records (none with ``overwrite``), drop stale error records and a partial last line.

        Returns:
            The indices into ``files`` not done in the file, in listing order, and no rejected files."""
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
    """The ``{"file", "error"}`` log of failed, not yet done images beside an output: a :class:`RecordFile` in which no
    record is done, removed when empty."""
    return RecordFile(path, lambda record: False, "failure", Path(path).name, keep_empty=False)
