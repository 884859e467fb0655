"""Unreadable images inside training and validation sets: skipped, counted and reported on the main process.

With ``bad_images="skip"`` a dataset returns ``None`` for an unreadable item: training replaces it with the next
readable one (:class:`SubstituteBad`), validation drops it (:class:`SkippingDataLoader`). Each bad file is warned
about once (:class:`BadImageWarning`)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, get_worker_info

from vitkit.data.images import ImageReadError

BAD_IMAGE_POLICIES = ("skip", "fail")

_REPORTED = 255
_REASONS = {1: "file not found", 2: "permission denied", 3: "not an image file Pillow can identify",
            4: "truncated file", 5: "too many pixels (Pillow's decompression-bomb limit)",
            6: "corrupt or undecodable image data"}


class BadImageWarning(UserWarning):
    """An image of a training or validation set could not be read and was skipped."""


def check_policy(bad_images: str, where: str = "bad_images") -> str:
    """Return ``bad_images`` if it is "skip" or "fail", else raise a ValueError naming ``where``."""
    if bad_images not in BAD_IMAGE_POLICIES:
        raise ValueError(f"{where} must be 'skip' (leave unreadable images out, with a warning) or 'fail' (stop at "
                         f"the first one), got {bad_images!r}")
    return bad_images


def _reason_code(err: ImageReadError) -> int:
    cause = err.__cause__
    if isinstance(cause, FileNotFoundError):
        return 1
    if isinstance(cause, PermissionError):
        return 2
    if isinstance(cause, Image.DecompressionBombError):
        return 5
    if isinstance(cause, Image.UnidentifiedImageError):
        return 3
    return 4 if "truncated" in err.reason.lower() else 6


class BadImageLog:
    """Which of ``size`` items were unreadable, shared across DataLoader workers; ``name``: what the items are, for
    messages."""

    def __init__(self, size: int, name: str) -> None:
        self.name = name
        self.size = size
        self.flags = torch.zeros(max(size, 1), dtype=torch.uint8).share_memory_()  # (N,) 0 = not known bad
        self.summarised = 0  # bad items counted in the last end-of-pass summary (main process)

    def is_bad(self, index: int) -> bool:
        return bool(self.flags[index])

    def count(self) -> int:
        """Distinct unreadable items met so far (by any process)."""
        return int((self.flags != 0).sum())

    def bad_indices(self) -> list[int]:
        return (self.flags != 0).nonzero().flatten().tolist()

    def record(self, index: int, err: ImageReadError) -> None:
        """Note that item ``index`` is unreadable; warn now on the main process, else leave it for the loader."""
        if self.flags[index]:
            return
        if get_worker_info() is None:
            self.flags[index] = _REPORTED
            warnings.warn(f"{err.path}: unreadable image, skipped ({err.reason}) [{self.count()} unreadable of "
                          f"{self.size} in {self.name} so far]", BadImageWarning, stacklevel=3)
        else:
            self.flags[index] = _reason_code(err)

    def take_unreported(self) -> list[tuple[int, str]]:
        """(index, reason) of the items recorded by workers and not yet warned about; marks them reported."""
        pending = ((self.flags != 0) & (self.flags != _REPORTED)).nonzero().flatten().tolist()
        out = [(i, _REASONS.get(int(self.flags[i]), "unreadable")) for i in pending]
        self.flags[pending] = _REPORTED
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, bad={self.count()} of {self.size})"


def find_wrapped(dataset: Any, match: Callable[[Any], bool]) -> Any:
    """The first dataset in a chain of wrappers (each holding the next as ``.dataset``) that ``match``es, or None."""
    for _ in range(16):
        if dataset is None or match(dataset):
            return dataset
        dataset = getattr(dataset, "dataset", None)
    return None


class SubstituteBad(Dataset):
    """Training wrapper: an unreadable item (``None``) is replaced by the next readable item (index ``i+1``, ...).

    Raises (on access):
        RuntimeError: no item of the dataset is readable."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        n = len(self.dataset)
        for k in range(n):
            item = self.dataset[(index + k) % n]
            if item is not None:
                return item
        raise RuntimeError(f"every one of the {n} images of {self.dataset!r} is unreadable (see the warnings)")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.dataset!r})"


class SkippingDataLoader(DataLoader):
    """A DataLoader that leaves out empty batches (``None`` from :class:`~vitkit.data.collate.DropNone`) and reports,
    on the main process, the unreadable images its dataset's :class:`BadImageLog` recorded in workers.

    Same constructor as ``torch.utils.data.DataLoader`` (so Lightning can re-create it with a DistributedSampler).
    """

    def __iter__(self) -> Iterator[Any]:
        source = find_wrapped(self.dataset, lambda d: isinstance(getattr(d, "bad_image_log", None), BadImageLog))
        log: BadImageLog | None = None if source is None else source.bad_image_log
        substituted = find_wrapped(self.dataset, lambda d: isinstance(d, SubstituteBad)) is not None
        try:
            last = len(self)  # Lightning stops after len(loader) batches without exhausting the iterator
        except TypeError:
            last = -1
        summarised = False
        for k, batch in enumerate(super().__iter__(), 1):
            if log is not None:
                _report_new(source, log)
                if k == last:
                    summarised = _summarise(source, log, substituted)
            if batch is not None:
                yield batch
        if log is not None and not summarised:
            _report_new(source, log)
            _summarise(source, log, substituted)


def _image_path(source: Any, index: int) -> str:
    try:
        return os.fspath(source.image_path(index))
    except Exception:  # a dataset without image_path(): name the item
        return f"item {index}"


def _report_new(source: Any, log: BadImageLog) -> None:
    for index, reason in log.take_unreported():
        warnings.warn(f"{_image_path(source, index)}: unreadable image, skipped ({reason}; found in a DataLoader "
                      f"worker) [{log.count()} unreadable of {log.size} in {log.name} so far]", BadImageWarning,
                      stacklevel=2)


def _summarise(source: Any, log: BadImageLog, substituted: bool) -> bool:
    """One counted warning at the end of a pass when unreadable images were met since the last summary."""
    new = log.count() - log.summarised
    if new <= 0:
        return True
    log.summarised += new
    paths = [Path(_image_path(source, i)).name for i in log.bad_indices()[:10]]
    more = ", ..." if log.count() > len(paths) else ""
    if substituted:
        effect = "each was replaced in its batch by the next readable image"
    else:
        effect = ("they were left out of this pass, so its metrics cover the other images only (COCO AP is computed "
                  "over the predicted image ids: their ground truth is left out, not counted as missed)")
    warnings.warn(f"{log.name}: {log.count()} of {log.size} images are unreadable and were skipped ({new} new since "
                  f"the last summary; {', '.join(paths)}{more}); {effect}. Set data.bad_images=fail to stop at the "
                  "first one.", BadImageWarning, stacklevel=2)
    return True
