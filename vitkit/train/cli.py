"""The training CLI: ``python tools/train.py CONFIG [--key.sub value ...] [--ckpt_path PATH|last]``.

A LightningCLI over :class:`DetectionModule` and :class:`CocoDataModule`. The class count, names and
category ids are linked from the data into the model; the run folder is ``runs/<config name>/``
(CSV logs, ``config.yaml``, ``checkpoints/``), and each checkpoint carries the resolved detector config so
that :func:`vitkit.load` rebuilds the model without the YAML.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

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


class VitkitCLI(LightningCLI):
    """LightningCLI with vitkit's links and run-folder defaults."""

    def __init__(self, *args, run_name: str = "run", **kwargs) -> None:
        self.run_name = run_name
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.dirpath": f"runs/{self.run_name}/checkpoints",
            "checkpoint.filename": "epoch{epoch:03d}-ap{val/AP:.3f}",
            "checkpoint.auto_insert_metric_name": False,
            "checkpoint.monitor": "val/AP",
            "checkpoint.mode": "max",
            "checkpoint.save_last": True,
            "trainer.logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": "runs", "name": self.run_name}},
        })
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.detector.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        parser.link_arguments("data.label_to_cat_id", "model.label_to_cat_id", apply_on="instantiate")

    def before_fit(self) -> None:
        detector = _to_plain(self.config[self.subcommand]["model"]["detector"])
        detector.setdefault("init_args", {})["num_classes"] = self.datamodule.num_classes
        self.model.detector_config = detector


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
    with _own_argv():
        VitkitCLI(DetectionModule, CocoDataModule, run_name=config.stem, save_config_kwargs={"overwrite": True},
                  args=["fit", "--config", str(config), *argv[1:]])
