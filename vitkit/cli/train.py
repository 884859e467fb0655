"""The training command: ``vitkit train CONFIG [--key.sub value ...] [--ckpt_path PATH|last]``.

CONFIG is a YAML path or a shipped config's name (:func:`vitkit.cli.configs.resolve_config`). The task follows from
the config (:func:`select_task`): a top-level ``task:`` key when it has one, else the network its ``model`` section
names, ``model.detector`` (detection) or ``model.captioner`` (captioning). Each task is a LightningCLI subclass of
:class:`TaskCLI` that adds its own links: :class:`DetectionCLI` links the class count, names and category ids from the
data into the model; :class:`CaptionCLI` links the tokenizer's vocabulary size, special ids and ``max_length``.
The run folder is ``runs/<config name>/`` (CSV logs, ``config.yaml``, ``checkpoints/``; for captioning also
``tokenizer.json``), and each checkpoint carries the resolved model config (and the tokenizer) so that
:func:`vitkit.load` rebuilds the model without the YAML.

Reliability (issue 7): checkpoints are written atomically and read with ``weights_only=True`` only
(:mod:`vitkit.train.checkpoint_io`); ``last.ckpt`` is also refreshed every ``checkpoint.last_every_n_train_steps``
steps, and :class:`~vitkit.train.resume.ExactResume` makes ``--ckpt_path last`` continue the same run exactly, also
from mid-epoch. Config and data mistakes (an unknown key, a wrong type, a missing data or image folder, malformed
annotations, train and val categories that differ, a missing image with ``data.bad_images: fail``, a checkpoint that
does not fit the data, ``--ckpt_path last`` with no ``last.ckpt`` to resume) end in one paragraph naming the key and
the fix on stderr, exit status 2, no traceback.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_warn

from vitkit.captioning.datamodule import CaptionDataModule
from vitkit.captioning.module import CaptionModule
from vitkit.cli.callbacks import LatestLastCheckpoint
from vitkit.cli.config_errors import VitkitArgumentParser, weights_mismatch_message
from vitkit.cli.configs import read_config, resolve_config, shipped_configs
from vitkit.data.images import ImageReadError
from vitkit.detection.datamodule import CocoDataModule
from vitkit.detection.module import DetectionModule
from vitkit.kernels.precision import training_precision
from vitkit.train.checkpoint_io import install_safe_checkpoint_io
from vitkit.train.guards import ConfigError, NonFiniteLossError
from vitkit.train.resume import ExactResume
from vitkit.utils.checkpoints import CheckpointError, safe_load_checkpoint

PROG = "python tools/train.py"
EXAMPLES = """examples:
  {prog} detr_shapes                                  # a shipped config, by name (CPU, ~15 min)
  {prog} configs/detr_shapes.yaml --data.root PATH    # a config by path; any COCO-layout dataset
  {prog} caption_shapes --trainer.max_epochs 5        # captioning; dotted keys override the config
  {prog} detr_shapes --ckpt_path last                 # resume runs/detr_shapes/checkpoints/last.ckpt
  {prog} detr_coco --help                             # every key of a config's task, with its type
  {prog} detr_shapes --print_config                   # the resolved config, nothing trained"""


def _to_plain(obj: Any) -> Any:
    """jsonargparse Namespace / containers -> plain dicts and lists (safe for torch.load(weights_only=True))."""
    if hasattr(obj, "as_dict"):
        obj = obj.as_dict()
    if isinstance(obj, dict):
        return {str(k): _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_to_plain(v) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    return str(obj)


class TaskCLI(LightningCLI):
    """What every task's training CLI shares: run-folder defaults under ``runs/<config name>/``, the ``task`` key,
    one-paragraph config errors, safe checkpoint I/O, exact resume and the ``--ckpt_path`` checks.

    A subclass names its task and classes and adds its own links (:meth:`add_task_links`) and the resolved network
    config it stores in the model for checkpoints (:meth:`record_network_config`).
    """

    task: ClassVar[str]  # the ``task`` key's value, and the spec's task (vitkit.utils.spec)
    network_key: ClassVar[str]  # the model's constructor argument that takes the network
    module_class: ClassVar[type[L.LightningModule]]
    datamodule_class: ClassVar[type[L.LightningDataModule]]
    monitor: ClassVar[str]  # best checkpoints by this metric
    ckpt_filename: ClassVar[str]

    def __init__(self, model_class: type[L.LightningModule] | None = None,
                 datamodule_class: type[L.LightningDataModule] | None = None, *args: Any, run_name: str = "run",
                 launch_argv: list[str] | None = None, help_command: str = PROG, **kwargs: Any) -> None:
        """Build the CLI (and, unless ``run=False``, run it).

        Args:
            model_class, datamodule_class: default: the task's (:attr:`module_class`, :attr:`datamodule_class`).
            *args: LightningCLI's other positional arguments.
            run_name: the run folder's name under ``runs/`` (the config's name).
            launch_argv: the command line that started this process; restored before fitting so that Lightning's
                DDP launcher starts the other ranks with it.
            help_command: the command named in error messages' ``--help`` hint.
            **kwargs: LightningCLI's keyword arguments.
        """
        self.run_name = run_name
        self.launch_argv = launch_argv
        self.help_command = help_command
        self.command_args = [a for a in kwargs.get("args") or [] if isinstance(a, str)]
        kwargs.setdefault("parser_class", VitkitArgumentParser)
        super().__init__(model_class or self.module_class, datamodule_class or self.datamodule_class, *args,
                         **kwargs)

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """LightningCLI's parser, told which command to name in its error messages."""
        parser = super().init_parser(**kwargs)
        parser.help_command = self.help_command
        return parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """The ``task`` key, the ``checkpoint`` group and CSV logger under ``runs/<config name>/``, the task's links."""
        parser.add_argument("--task", choices=[self.task], default=self.task,
                            help="the task this config trains (optional in CONFIG; see vitkit.cli.train.select_task)")
        parser.add_lightning_class_args(LatestLastCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.dirpath": f"runs/{self.run_name}/checkpoints",
            "checkpoint.filename": self.ckpt_filename,
            "checkpoint.auto_insert_metric_name": False,
            "checkpoint.monitor": self.monitor,
            "checkpoint.mode": "max",
            "checkpoint.save_last": True,
            "checkpoint.last_every_n_train_steps": 1000,
            "trainer.logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": "runs", "name": self.run_name}},
        })
        self.add_task_links(parser)

    def add_task_links(self, parser: LightningArgumentParser) -> None:
        """Link the datamodule's attributes into the model's arguments (the subclass's)."""
        raise NotImplementedError

    def record_network_config(self) -> None:
        """Store the resolved network config, with the linked values, in the model for its checkpoints."""
        raise NotImplementedError

    def network_config(self) -> dict[str, Any]:
        """The network's resolved ``class_path`` / ``init_args`` as plain data (``init_args`` always present)."""
        config = _to_plain(self.config[self.subcommand]["model"][self.network_key])
        config.setdefault("init_args", {})
        return config

    def _parse_ckpt_path(self) -> None:
        """LightningCLI reads ``--ckpt_path``'s hyper-parameters while parsing (``torch.load(weights_only=True)``) and
        lets them override the config; ``--model.*`` options given on the command line still win (so
        ``--ckpt_path CKPT --model.scst_start 0`` changes a resumed run). A refused or unreadable file gets
        :func:`vitkit.utils.checkpoints.safe_load_checkpoint`'s message, not torch's."""
        subcommand = self.config.get("subcommand")
        explicit = {a[len("--model."):].split("=", 1)[0] for a in self.command_args if a.startswith("--model.")}
        given = {k: self.config[subcommand]["model"][k] for k in explicit} if subcommand else {}
        try:
            super()._parse_ckpt_path()
        except Exception:  # torch's unpickling errors, or bytes that are no checkpoint at all
            ckpt = self.config[subcommand].get("ckpt_path") if subcommand else None
            if ckpt:
                safe_load_checkpoint(ckpt)  # raises a CheckpointError naming the file and the reason
            raise
        for key, value in given.items():
            self.config[subcommand]["model"][key] = value

    def instantiate_classes(self) -> None:
        """Build the data, model and trainer; a constructor's complaint (a missing data folder, a bad value) becomes
        a :class:`ConfigError` that :func:`main` prints as one paragraph."""
        try:
            super().instantiate_classes()
        except ConfigError:
            raise
        except (FileNotFoundError, NotADirectoryError, ValueError) as err:
            raise ConfigError(str(err)) from err

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> L.Trainer:
        config["precision"], note = training_precision(config.get("precision"), config.get("accelerator", "auto"))
        if note is not None:
            rank_zero_warn(note)
        trainer = super()._instantiate_trainer(config, [*callbacks, ExactResume()])
        install_safe_checkpoint_io(trainer)
        return trainer

    def _check_ckpt_path(self) -> None:
        ckpt = self.config[self.subcommand].get("ckpt_path")
        if ckpt == "last":
            self._check_last_checkpoint()
        elif ckpt not in (None, "best", "hpc") and "://" not in str(ckpt) and not Path(ckpt).is_file():
            raise ConfigError(f"ckpt_path: no checkpoint at {ckpt}. Fix: give the path of a .ckpt file, or "
                              "--ckpt_path last to resume from runs/<config>/checkpoints/last.ckpt")

    def _check_last_checkpoint(self) -> None:
        """``--ckpt_path last`` without a ``last.ckpt`` would start from scratch (Lightning only warns): refuse."""
        folders, found = [], False
        for callback in self.trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint):
                found = found or bool(callback._find_last_checkpoints(self.trainer))
                if callback.dirpath is not None:
                    folders.append(str(Path(callback.dirpath).resolve()))
        if found:
            return
        where = " or ".join(folders) if folders else "the checkpoint folder (no ModelCheckpoint is configured)"
        raise ConfigError(f"ckpt_path: --ckpt_path last found no last.ckpt in {where}, so there is nothing to resume "
                          f"(the working folder is {Path.cwd()}). Fix: run from the folder that holds the run's runs/ "
                          "folder (the one you trained in), or pass the checkpoint's path (--ckpt_path "
                          "runs/<config>/checkpoints/last.ckpt); leave --ckpt_path out to start a new run")

    def before_fit(self) -> None:
        """Give the user's command line back (Lightning's DDP launcher starts the other ranks by re-running
        ``sys.argv``, which :func:`own_argv` emptied), check ``--ckpt_path``, record the network config."""
        if self.launch_argv is not None:
            sys.argv = list(self.launch_argv)
        self._check_ckpt_path()
        self.record_network_config()


class DetectionCLI(TaskCLI):
    """Detection: :class:`DetectionModule` on :class:`CocoDataModule`, best checkpoints by ``val/AP``."""

    task, network_key = "detection", "detector"
    module_class, datamodule_class = DetectionModule, CocoDataModule
    monitor, ckpt_filename = "val/AP", "epoch{epoch:03d}-ap{val/AP:.3f}"

    def add_task_links(self, parser: LightningArgumentParser) -> None:
        """The data's class count, class names and category ids into the model and its detector."""
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.detector.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        parser.link_arguments("data.label_to_cat_id", "model.label_to_cat_id", apply_on="instantiate")

    def record_network_config(self) -> None:
        """The detector's config with the data's class count."""
        detector = self.network_config()
        detector["init_args"]["num_classes"] = self.datamodule.num_classes
        self.model.detector_config = detector


CAPTION_LINKS = ("vocab_size", "pad_id", "bos_id", "eos_id")  # datamodule attributes -> captioner arguments


class CaptionCLI(TaskCLI):
    """Captioning: :class:`CaptionModule` on :class:`CaptionDataModule`, best checkpoints by ``val/CIDEr``."""

    task, network_key = "captioning", "captioner"
    module_class, datamodule_class = CaptionModule, CaptionDataModule
    monitor, ckpt_filename = "val/CIDEr", "epoch{epoch:03d}-cider{val/CIDEr:.3f}"

    def add_task_links(self, parser: LightningArgumentParser) -> None:
        """The tokenizer's vocabulary size and special ids, and the data's ``max_length``, into the captioner."""
        for name in CAPTION_LINKS:
            parser.link_arguments(f"data.{name}", f"model.captioner.init_args.{name}", apply_on="instantiate")
        parser.link_arguments("data.max_length", "model.captioner.init_args.max_length")

    def record_network_config(self) -> None:
        """The captioner's config with the tokenizer's values and ``max_length``."""
        captioner = self.network_config()
        for name in CAPTION_LINKS:
            captioner["init_args"][name] = getattr(self.datamodule, name)
        captioner["init_args"]["max_length"] = self.datamodule.hparams.max_length
        self.model.captioner_config = captioner


TASK_CLIS: dict[str, type[TaskCLI]] = {cli.task: cli for cli in (DetectionCLI, CaptionCLI)}


def select_task(config: Mapping[str, Any], source: str | Path = "CONFIG") -> type[TaskCLI]:
    """The training CLI of a run config's task.

    The task is the config's top-level ``task`` key when it has one (``detection``, ``captioning``); otherwise the
    network its ``model`` section configures: ``model.detector`` trains detection, ``model.captioner`` captioning.

    Args:
        config: the config file's top level (:func:`vitkit.cli.configs.read_config`).
        source: the file, for messages.

    Raises:
        ConfigError: an unknown ``task``, a ``model`` section that names no network or both, or one that names the
            other task's network.
    """
    model = config.get("model")
    named = [cli for cli in TASK_CLIS.values() if isinstance(model, Mapping) and cli.network_key in model]
    choices = ", ".join(f"model.{cli.network_key} ({cli.task})" for cli in TASK_CLIS.values())
    task = config.get("task")
    if task is not None:
        if task not in TASK_CLIS:
            raise ConfigError(f"config {source}: task {task!r} is not a task. Fix: task: one of "
                              f"{', '.join(TASK_CLIS)}, or leave the key out to take the task from the model section")
        wrong = [cli for cli in named if cli.task != task]
        if wrong:
            raise ConfigError(f"config {source}: task {task!r} does not train model.{wrong[0].network_key} (a "
                              f"{wrong[0].task} network). Fix: configure model.{TASK_CLIS[task].network_key}, or "
                              "correct the task key")
        return TASK_CLIS[task]
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
    about = textwrap.fill("Train a model from a YAML run config (LightningCLI's fit). CONFIG is a path, or the name "
                          f"of a shipped config: {', '.join(shipped_configs())}. The task (detection or captioning) "
                          "follows from the config's model section. The run folder is runs/<config name>/.", 100)
    return (f"usage: {prog} CONFIG [--key.sub value ...] [--ckpt_path PATH|last] [--print_config]\n\n{about}\n\n"
            + EXAMPLES.format(prog=prog) + "\n")


def _fit(cli_class: type[TaskCLI], config: Path, overrides: list[str], prog: str, launch_argv: list[str]) -> None:
    """Run LightningCLI's fit; every error a user can act on becomes one paragraph and SystemExit."""
    try:
        with own_argv():
            cli_class(run_name=config.stem, save_config_kwargs={"overwrite": True}, launch_argv=launch_argv,
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
        argv: the arguments (default: ``sys.argv[1:]``).
        prog: the command, for usage and error messages (``vitkit train``).
        launch_argv: the command line that started this process, for Lightning's DDP launcher (default:
            ``sys.argv``, or ``sys.argv[0]`` and ``argv`` when ``argv`` is given).

    Returns:
        0 once training ends. Errors exit through SystemExit, as the argument parser's do: status 2 for a usage,
        config, data or checkpoint error (one paragraph on stderr), 1 for a non-finite loss.
    """
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
        cli_class = select_task(read_config(config), config)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    _fit(cli_class, config, argv[1:], prog, launch_argv)
    return 0
