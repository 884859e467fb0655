"""The ``vitkit`` command (``[project.scripts]``): ``vitkit COMMAND [ARGS ...]``.

Each command is the ``main(argv, prog)`` of a module imported only when dispatched, so ``vitkit --help`` and
``vitkit --version`` import no torch."""

from __future__ import annotations

import difflib
import importlib
import sys
from dataclasses import dataclass

from vitkit.cli.configs import shipped_configs
from vitkit.tasks import verbs
from vitkit.version import __version__

PROG = "vitkit"


@dataclass(frozen=True)
class Command:
    """One subcommand.

    Attributes:
        module: the module whose ``main(argv, prog) -> exit status`` runs it, imported only when it is dispatched.
        summary: one line for ``vitkit --help``.
        relaunch: its ``main`` also takes ``launch_argv`` (the command line Lightning's DDP launcher re-runs)."""

    module: str
    summary: str
    relaunch: bool = False

    def run(self, argv: list[str], prog: str, launch_argv: list[str]) -> int:
        """Import the command's module and run its ``main`` on ``argv``: the exit status. ``launch_argv`` is the
        whole command line (``vitkit COMMAND ARGS``), passed on to a ``relaunch`` command."""
        command = importlib.import_module(self.module)
        if self.relaunch:
            return command.main(argv, prog, launch_argv=launch_argv)
        return command.main(argv, prog)


_BEFORE_TASKS: dict[str, Command] = {
    "train": Command("vitkit.cli.train", "train a model from a run config: a YAML path or a shipped config's name",
                     relaunch=True),
    "eval": Command("vitkit.cli.eval", "COCO mAP of a results file or a checkpoint; COCO caption metrics"),
}
_AFTER_TASKS: dict[str, Command] = {
    "export": Command("vitkit.cli.export", "export a checkpoint as an ONNX graph or weights-only safetensors"),
    "make-shapes": Command("vitkit.cli.make_shapes", "write the synthetic shapes dataset in COCO 2017 layout"),
    "convert-vg": Command("vitkit.cli.convert_vg",
                          "convert Visual Genome region descriptions to COCO layout with captions"),
    "plot-pr": Command("vitkit.cli.plot_pr", "per-class precision-recall curves of a COCO results file (PNG)"),
}


def commands() -> dict[str, Command]:
    """Every subcommand, in ``vitkit --help``'s order: train and eval, the registered tasks' folder commands
    (:func:`vitkit.tasks.verbs`), then export and the dataset and plotting tools."""
    folder = {verb.name: Command(verb.module, verb.summary) for verb in verbs()}
    taken = sorted(set(folder) & {*_BEFORE_TASKS, *_AFTER_TASKS})
    if taken or len(folder) < len(verbs()):
        raise ValueError(f"vitkit.tasks registers a folder command twice, or one named as a vitkit command: {taken}")
    return {**_BEFORE_TASKS, **folder, **_AFTER_TASKS}


# commands that went, and where their work is done now
MOVED = {"benchmark": "the benchmarks are a source checkout's tool: run `python -m benchmarks.runner --help` in the "
                      "repository root"}
EXAMPLES = """examples:
  vitkit train detr_shapes                                    # the shipped shapes detector (CPU, 12-20 min)
  vitkit train my_config.yaml --data.root data/coco --trainer.max_epochs 50
  vitkit eval detr_shapes --ckpt runs/detr_shapes/checkpoints/last.ckpt
  vitkit detect photos/ --ckpt runs/detr_shapes/checkpoints/last.ckpt --out dets.json --draw drawn/
  vitkit caption photos/ --ckpt runs/caption_shapes/checkpoints/last.ckpt --out captions.jsonl
  vitkit describe photos/ --ckpt runs/describe_shapes/checkpoints/last.ckpt --out regions.jsonl --draw drawn/
  vitkit export runs/detr_shapes/checkpoints/last.ckpt --format onnx --dynamic"""


def help_text() -> str:
    """What ``vitkit --help`` prints: usage, the commands, examples and the shipped configs."""
    table = commands()
    width = max(map(len, table))
    listed = "\n".join(f"  {name:<{width}}  {command.summary}" for name, command in table.items())
    return (f"usage: {PROG} COMMAND [ARGS ...]\n\n"
            "vitkit: vision transformers for DETR-style detection and image captioning.\n\n"
            f"commands:\n{listed}\n\n{EXAMPLES}\n\n"
            f"shipped configs (give the name to train or eval): {', '.join(shipped_configs())}\n"
            f"`{PROG} COMMAND --help` lists a command's options, with examples.\n")


def main(argv: list[str] | None = None) -> int:
    """Run the subcommand named by the first argument (``argv`` default ``sys.argv[1:]``).

    Returns:
        The subcommand's exit status; 0 for ``--help`` and ``--version``, 2 for no or an unknown command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(help_text(), end="")
        return 0
    if argv and argv[0] == "--version":
        print(f"{PROG} {__version__}")
        return 0
    if not argv:
        print(help_text(), end="", file=sys.stderr)
        return 2
    name, rest = argv[0], argv[1:]
    table = commands()
    if name not in table:
        close = difflib.get_close_matches(name, list(table), n=1)
        hint = f" ({MOVED[name]})" if name in MOVED else f" (did you mean '{close[0]}'?)" if close else ""
        print(f"{PROG}: error: unknown command '{name}'{hint}; the commands are {', '.join(table)} (see "
              f"`{PROG} --help`)", file=sys.stderr)
        return 2
    return table[name].run(rest, f"{PROG} {name}", launch_argv=[sys.argv[0], name, *rest])


if __name__ == "__main__":
    sys.exit(main())
