"""The training CLI every task shares (:class:`TaskCLI`); :mod:`vitkit.cli.train` picks the registered task of a
config and runs it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_warn

from vitkit.cli.callbacks import LatestLastCheckpoint
from vitkit.cli.config_errors import VitkitArgumentParser
from vitkit.kernels.precision import training_precision
from vitkit.training.checkpoint_io import install_safe_checkpoint_io
from vitkit.training.guards import ConfigError
from vitkit.training.resume import ExactResume
from vitkit.training.task import Task
from vitkit.utils.checkpoints import safe_load_checkpoint

PROG = "python tools/train.py"


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
    """The training CLI of one task (:attr:`task`): run folders under ``runs/<config name>/``, the ``task`` key,
    one-paragraph config errors, safe checkpoint I/O, exact resume and the ``--ckpt_path`` checks."""

    def __init__(self, task: Task, model_class: type[L.LightningModule] | None = None,
                 datamodule_class: type[L.LightningDataModule] | None = None, *args: Any, run_name: str = "run",
                 launch_argv: list[str] | None = None, help_command: str = PROG, **kwargs: Any) -> None:
        """Build the CLI (and, unless ``run=False``, run it); other arguments are LightningCLI's.

        Args:
            model_class, datamodule_class: default: the task's (``task.module_class``, ``task.datamodule_class``).
            run_name: the run folder's name under ``runs/`` (the config's name).
            launch_argv: the command line that started this process, for Lightning's DDP launcher.
            help_command: the command named in error messages' ``--help`` hint."""
        self.task = task
        self.run_name = run_name
        self.launch_argv = launch_argv
        self.help_command = help_command
        self.command_args = [a for a in kwargs.get("args") or [] if isinstance(a, str)]
        kwargs.setdefault("parser_class", VitkitArgumentParser)
        super().__init__(model_class or task.module_class, datamodule_class or task.datamodule_class, *args,
                         **kwargs)

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """LightningCLI's parser, told which command to name in its error messages."""
        parser = super().init_parser(**kwargs)
        parser.help_command = self.help_command
        return parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """The ``task`` key, the ``checkpoint`` group and CSV logger under ``runs/<config name>/``, the task's links."""
        parser.add_argument("--task", choices=[self.task.name], default=self.task.name,
                            help="the task this config trains (optional in CONFIG; see vitkit.cli.train.select_task)")
        parser.add_lightning_class_args(LatestLastCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.dirpath": f"runs/{self.run_name}/checkpoints",
            "checkpoint.filename": self.task.ckpt_filename,
            "checkpoint.auto_insert_metric_name": False,
            "checkpoint.monitor": self.task.monitor,
            "checkpoint.mode": "max",
            "checkpoint.save_last": True,
            "checkpoint.last_every_n_train_steps": 1000,
            "trainer.logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": "runs", "name": self.run_name}},
        })
        self.task.add_links(parser)

    def network_config(self, key: str) -> dict[str, Any]:
        """A network's resolved ``class_path`` / ``init_args`` (always present) as plain data; ``key``: one of
        ``networks``."""
        config = _to_plain(self.config[self.subcommand]["model"][key])
        config.setdefault("init_args", {})
        return config

    def _parse_ckpt_path(self) -> None:
        """Read ``--ckpt_path``'s hyper-parameters safely; command-line ``--model.*`` options still win."""
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
        if config.get("enable_checkpointing") is False:  # no checkpoints asked for: drop the CLI's own ModelCheckpoint
            callbacks = [c for c in callbacks if not isinstance(c, LatestLastCheckpoint)]
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
        self.task.record_configs({key: self.network_config(key) for key in self.task.networks}, self.model,
                                 self.datamodule)
