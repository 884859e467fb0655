"""The training command: ``vitkit train CONFIG [--key.sub value ...] [--ckpt_path PATH|last]``.

CONFIG is a YAML path or a shipped config's name. The run folder is ``runs/<config name>/`` (CSV logs,
``config.yaml``, ``checkpoints/``, and ``tokenizer.json`` for captioning). Config and data mistakes end in one
paragraph on stderr and exit status 2."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vitkit.cli.config_errors import weights_mismatch_message
from vitkit.cli.configs import read_config, resolve_config, shipped_configs
from vitkit.cli.task_cli import PROG, TaskCLI
from vitkit.data.images import ImageReadError
from vitkit.tasks import tasks
from vitkit.training.guards import ConfigError, NonFiniteLossError
from vitkit.training.task import Task
from vitkit.utils.checkpoints import CheckpointError

__all__ = ["PROG", "TaskCLI", "main", "own_argv", "select_task"]

EXAMPLES = """examples:
  {prog} detr_shapes                                  # a shipped config, by name (CPU, ~15 min)
  {prog} configs/detr_shapes.yaml --data.root PATH    # a config by path; any COCO-layout dataset
  {prog} caption_shapes --trainer.max_epochs 5        # captioning; dotted keys override the config
  {prog} detr_shapes --ckpt_path last                 # resume runs/detr_shapes/checkpoints/last.ckpt
  {prog} detr_coco --help                             # every key of a config's task, with its type
  {prog} detr_shapes --print_config                   # the resolved config, nothing trained"""


def _named_tasks(model: Any, registered: tuple[Task, ...]) -> list[Task]:
    """The tasks whose networks a ``model`` section configures; a task whose networks hold another's wins over it
    (``model.detector`` and ``model.text`` is the describe task, not detection)."""
    if not isinstance(model, Mapping):
        return []
    named = [task for task in registered if all(key in model for key in task.networks)]
    return [task for task in named if not any(set(task.networks) < set(other.networks) for other in named)]


def select_task(config: Mapping[str, Any], source: str | Path = "CONFIG") -> Task:
    """The registered task a run config trains: its top-level ``task`` key, else the networks its ``model`` section
    configures (``detector``: detection, ``captioner``: captioning, ``detector`` and ``text``: describe).

    Raises:
        ConfigError: an unknown ``task``, a ``model`` section that names no task's networks or two tasks', or one
            that names another task's networks."""
    registered = tasks()
    by_name = {task.name: task for task in registered}
    named = _named_tasks(config.get("model"), registered)
    choices = ", ".join(f"{task.networks_named()} ({task.name})" for task in registered)
    task = config.get("task")
    if task is not None:
        if not isinstance(task, str) or task not in by_name:
            raise ConfigError(f"config {source}: task {task!r} is not a task. Fix: task: one of "
                              f"{', '.join(by_name)}, or leave the key out to take the task from the model section")
        wrong = [other for other in named if other.name != task]
        if wrong:
            raise ConfigError(f"config {source}: task {task!r} does not train {wrong[0].networks_named()} (a "
                              f"{wrong[0].name} network). Fix: configure {by_name[task].networks_named()}, or "
                              "correct the task key")
        return by_name[task]
    if len(named) != 1:
        what = "names no network" if not named else "names two networks"
        raise ConfigError(f"config {source}: the model section {what}, so the task is unknown. Fix: configure "
                          f"exactly one of {choices} (as the shipped configs do), or add a top-level task: key")
    return named[0]


@contextmanager
def own_argv() -> Iterator[None]:
    """Hide the tool's own command line from LightningCLI, which warns when it sees both ``args`` and argv."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


def _usage(prog: str) -> str:
    """The help of ``train`` without a config: usage, what it does, examples and the shipped configs."""
    names = [task.name for task in tasks()]
    listed = f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else "".join(names)
    about = textwrap.fill("Train a model from a YAML run config (LightningCLI's fit). CONFIG is a path, or the name "
                          f"of a shipped config: {', '.join(shipped_configs())}. The task ({listed}) follows from the "
                          "config's model section. The run folder is runs/<config name>/.", 100)
    return (f"usage: {prog} CONFIG [--key.sub value ...] [--ckpt_path PATH|last] [--print_config]\n\n{about}\n\n"
            + EXAMPLES.format(prog=prog) + "\n")


def _fit(task: Task, config: Path, overrides: list[str], prog: str, launch_argv: list[str]) -> None:
    """Run LightningCLI's fit; every error a user can act on becomes one paragraph and SystemExit."""
    try:
        with own_argv():
            TaskCLI(task, run_name=config.stem, save_config_kwargs={"overwrite": True}, launch_argv=launch_argv,
                    help_command=prog, args=["fit", "--config", str(config), *overrides])
    except (ConfigError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except ImageReadError as err:  # bad_images: fail met an unreadable image while training (num_workers 0)
        print(f"error: data.root: {err}. Fix: replace the file, or set data.bad_images: skip to leave unreadable "
              "images out (each is reported by path)", file=sys.stderr)
        raise SystemExit(2) from None
    except RuntimeError as err:
        mismatch = weights_mismatch_message(err, config, "ckpt_path")
        if mismatch is None:
            raise
        print(f"error: {mismatch}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None, prog: str = PROG, launch_argv: list[str] | None = None) -> int:
    """Train: the first argument is the config (a path or a shipped name), then dotted overrides.

    Args:
        launch_argv: the command line that started this process, for Lightning's DDP launcher (default:
            ``sys.argv``, or ``sys.argv[0]`` and ``argv`` when ``argv`` is given).

    Returns:
        0 once training ends. Errors exit through SystemExit: status 2 for a usage, config, data or checkpoint error
        (one paragraph on stderr), 1 for a non-finite loss."""
    if launch_argv is None:
        launch_argv = list(sys.argv) if argv is None else [sys.argv[0], *argv]
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        help_asked = bool(argv) and argv[0] in ("-h", "--help")
        print(_usage(prog), end="", file=sys.stdout if help_asked else sys.stderr)
        if help_asked:
            return 0
        raise SystemExit(2)
    try:
        config = resolve_config(argv[0])
        task = select_task(read_config(config), config)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    _fit(task, config, argv[1:], prog, launch_argv)
    return 0
