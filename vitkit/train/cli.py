"""The training CLI: ``python tools/train.py CONFIG [--key.sub value ...] [--ckpt_path PATH|last]``.

A LightningCLI over :class:`DetectionModule` and :class:`CocoDataModule`, or, for a config whose ``model`` has a
``captioner`` entry, over :class:`CaptionModule` and :class:`CaptionDataModule`. Detection links the class count,
names and category ids from the data into the model; captioning links the tokenizer's vocabulary size, special ids
and ``max_length``. The run folder is ``runs/<config name>/`` (CSV logs, ``config.yaml``, ``checkpoints/``; for
captioning also ``tokenizer.json``), and each checkpoint carries the resolved model config (and the tokenizer) so
that :func:`vitkit.load` rebuilds the model without the YAML.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from vitkit.train.caption_datamodule import CaptionDataModule
from vitkit.train.caption_module import CaptionModule
from vitkit.train.datamodules import CocoDataModule
from vitkit.train.detection_module import DetectionModule


def _to_plain(obj):
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


class LatestLastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` is refreshed at every save point.

    Since Lightning 2.6, ``save_last=True`` writes ``last.ckpt`` only when a top-k checkpoint is saved at the same
    step, so with a monitored metric it lags behind after the best epoch and ``--ckpt_path last`` resumes from the
    best epoch rather than the latest. This subclass also writes it when the metric did not improve (older
    Lightning already did, and then this adds nothing).
    """

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_stale(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_stale(trainer)

    def _save_last_if_stale(self, trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):  # skipped: saved at this step
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class VitkitCLI(LightningCLI):
    """LightningCLI with vitkit's links and run-folder defaults."""

    def __init__(self, *args, run_name: str = "run", launch_argv: list[str] | None = None, **kwargs) -> None:
        self.run_name = run_name
        self.launch_argv = launch_argv
        super().__init__(*args, **kwargs)

    def _restore_launch_argv(self) -> None:
        """Give the user's command line back before fitting: Lightning's DDP launcher (several devices without
        torchrun/SLURM) starts the other ranks by re-running ``sys.argv``, which :func:`_own_argv` emptied."""
        if self.launch_argv is not None:
            sys.argv = list(self.launch_argv)

    monitor, ckpt_filename = "val/AP", "epoch{epoch:03d}-ap{val/AP:.3f}"  # best checkpoints by this metric

    def _add_run_defaults(self, parser) -> None:
        """The ``checkpoint`` group (last.ckpt refreshed every epoch, best by :attr:`monitor`) and a CSV logger,
        all under ``runs/<config name>/``."""
        parser.add_lightning_class_args(LatestLastCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.dirpath": f"runs/{self.run_name}/checkpoints",
            "checkpoint.filename": self.ckpt_filename,
            "checkpoint.auto_insert_metric_name": False,
            "checkpoint.monitor": self.monitor,
            "checkpoint.mode": "max",
            "checkpoint.save_last": True,
            "trainer.logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": "runs", "name": self.run_name}},
        })

    def add_arguments_to_parser(self, parser) -> None:
        self._add_run_defaults(parser)
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.detector.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        parser.link_arguments("data.label_to_cat_id", "model.label_to_cat_id", apply_on="instantiate")

    def before_fit(self) -> None:
        self._restore_launch_argv()
        detector = _to_plain(self.config[self.subcommand]["model"]["detector"])
        detector.setdefault("init_args", {})["num_classes"] = self.datamodule.num_classes
        self.model.detector_config = detector


CAPTION_LINKS = ("vocab_size", "pad_id", "bos_id", "eos_id")  # datamodule attributes -> captioner arguments


class CaptionCLI(VitkitCLI):
    """LightningCLI for captioning: tokenizer links, ``val/CIDEr`` checkpoints, the resolved captioner config."""

    monitor, ckpt_filename = "val/CIDEr", "epoch{epoch:03d}-cider{val/CIDEr:.3f}"

    def add_arguments_to_parser(self, parser) -> None:
        self._add_run_defaults(parser)
        for name in CAPTION_LINKS:
            parser.link_arguments(f"data.{name}", f"model.captioner.init_args.{name}", apply_on="instantiate")
        parser.link_arguments("data.max_length", "model.captioner.init_args.max_length")

    def before_fit(self) -> None:
        self._restore_launch_argv()
        captioner = _to_plain(self.config[self.subcommand]["model"]["captioner"])
        init_args = captioner.setdefault("init_args", {})
        for name in CAPTION_LINKS:
            init_args[name] = getattr(self.datamodule, name)
        init_args["max_length"] = self.datamodule.hparams.max_length
        self.model.captioner_config = captioner


def is_caption_config(config: str | Path) -> bool:
    """Whether a YAML recipe trains captioning: its ``model`` section has a ``captioner`` entry."""
    import yaml

    try:
        with open(config) as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return False  # let LightningCLI report the problem
    return isinstance(data, dict) and isinstance(data.get("model"), dict) and "captioner" in data["model"]


@contextmanager
def _own_argv():
    """Hide the tool's own command line from LightningCLI, which warns when it sees both ``args`` and argv."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


def validate_checkpoint(config: str | Path, ckpt: str | Path, overrides: list[str] | tuple = ()):
    """Evaluate ``ckpt`` on the validation split of ``config``'s data.

    Returns:
        (the ``CocoEvalResult``, the gathered COCO results, whether this process is global rank 0). Under DDP
        every rank gets the same gathered result; only rank 0 should report it.
    """
    with _own_argv():
        cli = VitkitCLI(DetectionModule, CocoDataModule, run=False, run_name=Path(config).stem,
                        save_config_callback=None,
                        args=["--config", str(config), "--trainer.logger", "false", *overrides])
    cli.trainer.validate(cli.model, datamodule=cli.datamodule, ckpt_path=str(ckpt), verbose=False)
    return cli.model.last_eval, cli.model.last_results, cli.trainer.is_global_zero


def main(argv: list[str] | None = None) -> None:
    """Entry point: the first argument is the YAML config, then dotted overrides."""
    launch_argv = list(sys.argv) if argv is None else [sys.argv[0], *argv]
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        if argv and argv[0] in ("-h", "--help"):
            with _own_argv():
                VitkitCLI(DetectionModule, CocoDataModule, args=["fit", "--help"])
        print("usage: python tools/train.py CONFIG.yaml [--key.sub value ...] [--ckpt_path PATH|last]",
              file=sys.stderr)
        raise SystemExit(2)
    config = Path(argv[0])
    if not config.is_file():
        print(f"error: config file not found: {config}", file=sys.stderr)
        raise SystemExit(2)
    if is_caption_config(config):
        cli_class, model_class, data_class = CaptionCLI, CaptionModule, CaptionDataModule
    else:
        cli_class, model_class, data_class = VitkitCLI, DetectionModule, CocoDataModule
    with _own_argv():
        cli_class(model_class, data_class, run_name=config.stem, save_config_kwargs={"overwrite": True},
                  launch_argv=launch_argv, args=["fit", "--config", str(config), *argv[1:]])
