"""The ``vitkit`` command (``[project.scripts]``): ``vitkit COMMAND [ARGS ...]``.

Each command is the ``main(argv, prog)`` of a module of this package, which ``tools/<name>.py`` also runs; they
take the same options either way. ``vitkit`` alone or ``vitkit --help`` lists the commands with examples, and
``vitkit COMMAND --help`` gives a command's options and examples.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable
from dataclasses import dataclass

from vitkit.cli import benchmark, caption, convert_vg, describe, detect, export, make_shapes, plot_pr, train
from vitkit.cli import eval as eval_command
from vitkit.cli.configs import shipped_configs
from vitkit.version import __version__

PROG = "vitkit"


def _train(argv: list[str], prog: str) -> int:
    """``train``, told the command line that Lightning's DDP launcher re-runs to start the other ranks."""
    return train.main(argv, prog, launch_argv=[sys.argv[0], "train", *argv])


@dataclass(frozen=True)
class Command:
    """One subcommand.

    Attributes:
        run: ``(argv, prog) -> exit status``.
        summary: one line for ``vitkit --help``.
    """

    run: Callable[[list[str], str], int]
    summary: str


COMMANDS: dict[str, Command] = {
    "train": Command(_train, "train a model from a run config: a YAML path or a shipped config's name"),
    "eval": Command(eval_command.main, "COCO mAP of a results file or a checkpoint; COCO caption metrics"),
    "detect": Command(detect.main, "detect objects in every image of a folder (COCO results JSON)"),
    "caption": Command(caption.main, "caption every image of a folder (JSON Lines or CSV, resumable)"),
    "describe": Command(describe.main, "detect and caption each object of every image of a folder (JSON Lines)"),
    "export": Command(export.main, "export a checkpoint as an ONNX graph or weights-only safetensors"),
    "benchmark": Command(benchmark.main, "time vitkit against its peers (needs a source checkout's benchmarks/)"),
    "make-shapes": Command(make_shapes.main, "write the synthetic shapes dataset in COCO 2017 layout"),
    "convert-vg": Command(convert_vg.main, "convert Visual Genome region descriptions to COCO layout with captions"),
    "plot-pr": Command(plot_pr.main, "per-class precision-recall curves of a COCO results file (PNG)"),
}
EXAMPLES = """examples:
  vitkit train detr_shapes                                    # the shipped shapes detector (CPU, 12-20 min)
  vitkit train my_config.yaml --data.root data/coco --trainer.max_epochs 50
  vitkit eval detr_shapes --ckpt runs/detr_shapes/checkpoints/last.ckpt
  vitkit detect photos/ --ckpt runs/detr_shapes/checkpoints/last.ckpt --out dets.json --draw drawn/
  vitkit caption photos/ --ckpt runs/caption_shapes/checkpoints/last.ckpt --out captions.jsonl
  vitkit describe photos/ --ckpt runs/dense_shapes/checkpoints/last.ckpt --out regions.jsonl --draw drawn/
  vitkit export runs/detr_shapes/checkpoints/last.ckpt --format onnx --dynamic
  vitkit benchmark --quick --threads 1"""


def help_text() -> str:
    """What ``vitkit --help`` prints: usage, the commands, examples and the shipped configs."""
    width = max(map(len, COMMANDS))
    commands = "\n".join(f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items())
    return (f"usage: {PROG} COMMAND [ARGS ...]\n\n"
            "vitkit: vision transformers for DETR-style detection and image captioning.\n\n"
            f"commands:\n{commands}\n\n{EXAMPLES}\n\n"
            f"shipped configs (give the name to train or eval): {', '.join(shipped_configs())}\n"
            f"`{PROG} COMMAND --help` lists a command's options, with examples.\n")


def main(argv: list[str] | None = None) -> int:
    """Run the subcommand named by the first argument.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        The subcommand's exit status; 0 for ``--help`` and ``--version``, 2 for no or an unknown command.
    """
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
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"{PROG}: error: unknown command '{name}'{hint}; the commands are {', '.join(COMMANDS)} (see "
              f"`{PROG} --help`)", file=sys.stderr)
        return 2
    return COMMANDS[name].run(rest, f"{PROG} {name}")


if __name__ == "__main__":
    sys.exit(main())
