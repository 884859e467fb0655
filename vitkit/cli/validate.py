"""Evaluate a detection checkpoint, or official DETR weights, on the validation split of a run config's data
(``vitkit eval CONFIG --ckpt CKPT`` / ``--weights PATH``), through the same LightningCLI that trains it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vitkit.cli.config_errors import weights_mismatch_message
from vitkit.cli.configs import read_config
from vitkit.cli.train import TaskCLI, own_argv, select_task
from vitkit.detection.official_weights import read_detr_weights, select_classes
from vitkit.detection.task import TASK as DETECTION
from vitkit.eval.coco_eval import CocoEvalResult
from vitkit.training.guards import ConfigError
from vitkit.utils.checkpoints import CheckpointError

ValidationResult = tuple[CocoEvalResult, list[dict[str, Any]], bool]


def _detection_cli(config: str | Path, overrides: Sequence[str], flag: str) -> TaskCLI:
    """The detection CLI of ``config`` built for validation (no logger, no saved config), nothing run yet.

    Raises:
        ConfigError: ``config`` trains another task (``flag`` names the weights in the message).
    """
    task = select_task(read_config(config), config)
    if task is not DETECTION:
        raise ConfigError(f"config {config} trains {task.name}; {flag} evaluates detection models. Fix: give the "
                          "detection config the weights were trained with")
    with own_argv():
        return TaskCLI(DETECTION, run=False, run_name=Path(config).stem, save_config_callback=None,
                       args=["--config", str(config), "--trainer.logger", "false", *overrides])


def validate_checkpoint(config: str | Path, ckpt: str | Path, overrides: Sequence[str] = ()) -> ValidationResult:
    """Evaluate ``ckpt`` (written by ``vitkit train``) on the validation split of ``config``'s data, with dotted
    ``overrides``.

    Returns:
        (the ``CocoEvalResult``, the gathered COCO results, whether this process is global rank 0); every DDP rank
        gets the same gathered result.

    Raises:
        ConfigError: a config mistake, or weights that do not fit the model ``config`` builds.
        CheckpointError: a checkpoint that cannot be loaded safely."""
    cli = _detection_cli(config, overrides, "--ckpt")
    try:
        cli.trainer.validate(cli.model, datamodule=cli.datamodule, ckpt_path=str(ckpt), verbose=False)
    except RuntimeError as err:
        mismatch = weights_mismatch_message(err, config, "--ckpt")
        if mismatch is None:
            raise
        raise ConfigError(mismatch) from err
    return cli.model.last_eval, cli.model.last_results, cli.trainer.is_global_zero


def validate_weights(config: str | Path, weights: str | Path, overrides: Sequence[str] = ()) -> ValidationResult:
    """Evaluate official DETR weights on the validation split of ``config``'s data (a DETR-R50 config).

    Args:
        weights: a facebookresearch/detr ``.pth``, or Hugging Face DETR ``model.safetensors`` / ``pytorch_model.bin``
            or the folder holding one; the class head is narrowed to the data's category ids.

    Returns:
        What :func:`validate_checkpoint` returns.

    Raises:
        ConfigError: no weights, not a DETR layout, classes the data lacks, or weights that do not fit.
        CheckpointError: a file that cannot be loaded safely."""
    try:
        state, info = read_detr_weights(weights)  # a refused or unreadable file: CheckpointError, as for --ckpt
    except CheckpointError:
        raise
    except (FileNotFoundError, ValueError) as err:  # no weights in a folder, or not a DETR layout
        raise ConfigError(f"--weights {weights}: {err}. Fix: give a facebookresearch/detr .pth, or Hugging Face DETR "
                          "model.safetensors / pytorch_model.bin or the folder that holds one") from err
    cli = _detection_cli(config, overrides, "--weights")
    try:
        state = select_classes(state, list(cli.datamodule.label_to_cat_id))
    except ValueError as err:
        raise ConfigError(f"--weights {weights}: {err}; the weights hold {info['num_classes']} classes") from err
    try:
        cli.model.detector.load_state_dict(state)
    except RuntimeError as err:
        raise ConfigError(weights_mismatch_message(err, config, "--weights") or str(err)) from err
    cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
    return cli.model.last_eval, cli.model.last_results, cli.trainer.is_global_zero
