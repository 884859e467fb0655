"""The registered tasks (:data:`REGISTERED`): the one place that lists them, one line each, with their folder
commands. Nothing is imported at import time (:func:`verbs` needs no torch); :func:`tasks` imports the
descriptors on first use."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vitkit.training.task import Task

__all__ = ["REGISTERED", "Registration", "Verb", "find", "names", "tasks", "verbs"]


@dataclass(frozen=True)
class Verb:
    """A folder command a task brings: ``vitkit NAME`` runs ``main(argv, prog) -> exit status`` of ``module``
    (imported only when dispatched); ``summary`` is its line in ``vitkit --help``."""
    name: str
    module: str
    summary: str


@dataclass(frozen=True)
class Registration:
    """One registered task: ``descriptor``, the module defining its ``TASK`` (``"vitkit.detection.task"``), and
    ``verbs``."""
    descriptor: str
    verbs: tuple[Verb, ...] = ()


REGISTERED: tuple[Registration, ...] = (
    Registration("vitkit.detection.task", (Verb("detect", "vitkit.cli.detect",
                                                "detect objects in every image of a folder (COCO results JSON)"),)),
    Registration("vitkit.captioning.task", (Verb("caption", "vitkit.cli.caption",
                                                 "caption every image of a folder (JSON Lines or CSV, resumable)"),)),
    Registration("vitkit.describe.task", (Verb("describe", "vitkit.cli.describe", "detect and caption each object "
                                               "of every image of a folder (JSON Lines)"),)),
)
"""The tasks, in the order messages list them."""


def tasks() -> tuple[Task, ...]:
    """Every registered task's descriptor, in registration order (their modules are imported on first use).

    Raises:
        ImportError: a registered module that defines no ``TASK``, or two tasks of one name.
    """
    found = []
    for entry in REGISTERED:
        task = getattr(importlib.import_module(entry.descriptor), "TASK", None)
        if task is None:
            raise ImportError(f"{entry.descriptor} defines no TASK (a vitkit.training.task.Task), but vitkit.tasks "
                              "registers it")
        found.append(task)
    seen = [t.name for t in found]
    twice = sorted({name for name in seen if seen.count(name) > 1})
    if twice:
        raise ImportError(f"vitkit.tasks registers two tasks named {', '.join(twice)}")
    return tuple(found)


def names() -> list[str]:
    """The registered tasks' names, in registration order."""
    return [task.name for task in tasks()]


def find(name: str) -> Task | None:
    """The registered task named ``name``, or None."""
    return next((task for task in tasks() if task.name == name), None)


def verbs() -> tuple[Verb, ...]:
    """Every registered task's folder commands, in registration order (no descriptor is imported)."""
    return tuple(verb for entry in REGISTERED for verb in entry.verbs)
