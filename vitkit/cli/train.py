"""The training CLI: ``python tools/train.py CONFIG [--key.sub value ...] [--ckpt_path PATH|last]``.

A LightningCLI over :class:`DetectionModule` and :class:`CocoDataModule`, or, for a config whose ``model`` has a
``captioner`` entry, over :class:`CaptionModule` and :class:`CaptionDataModule`. Detection links the class count,
names and category ids from the data into the model; captioning links the tokenizer's vocabulary size, special ids
and ``max_length``. The run folder is ``runs/<config name>/`` (CSV logs, ``config.yaml``, ``checkpoints/``; for
captioning also ``tokenizer.json``), and each checkpoint carries the resolved model config (and the tokenizer) so
that :func:`vitkit.load` rebuilds the model without the YAML.

Reliability (issue 7): checkpoints are written atomically and read with ``weights_only=True`` only
(:mod:`vitkit.train.checkpoint_io`); ``last.ckpt`` is also refreshed every ``checkpoint.last_every_n_train_steps``
steps, and :class:`~vitkit.train.resume.ExactResume` makes ``--ckpt_path last`` continue the same run exactly, also
from mid-epoch. Config and data mistakes (an unknown key, a wrong type, a missing data or image folder, malformed
annotations, train and val categories that differ, a missing image with ``data.bad_images: fail``, a checkpoint that
does not fit the data, ``--ckpt_path last`` with no ``last.ckpt`` to resume) end in one paragraph naming the key and
the fix on stderr, exit status 2, no traceback.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
import sys
from contextlib import contextmanager
from pathlib import Path

import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from vitkit.captioning.datamodule import CaptionDataModule
from vitkit.captioning.module import CaptionModule
from vitkit.data.folder import ImageReadError
from vitkit.detection.datamodule import CocoDataModule
from vitkit.detection.module import DetectionModule
from vitkit.detection.official_weights import read_detr_weights, select_classes
from vitkit.train.checkpoint_io import install_safe_checkpoint_io
from vitkit.train.guards import ConfigError, NonFiniteLossError
from vitkit.train.resume import ExactResume
from vitkit.utils.checkpoints import CheckpointError, safe_load_checkpoint


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
    def __init__(self, *args, last_every_n_train_steps: int = 0, **kwargs) -> None:
        """Args: ``ModelCheckpoint``'s, and ``last_every_n_train_steps``: also refresh ``last.ckpt`` every this many
        optimizer steps (0 = only at the epoch / validation ends), so a run killed mid-epoch resumes from at most
        that many steps back."""
        super().__init__(*args, **kwargs)
        if last_every_n_train_steps < 0:
            raise ConfigError(f"checkpoint.last_every_n_train_steps must be >= 0 (0 = off), got "
                              f"{last_every_n_train_steps}")
        self.last_every_n_train_steps = last_every_n_train_steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        n = self.last_every_n_train_steps
        if (n and self.save_last and trainer.global_step % n == 0 and not trainer.fit_loop._should_accumulate()
                and not self._should_skip_saving_checkpoint(trainer)):
            # Not counted as this step's save, so a validation at the same step still saves its top-k checkpoint.
            saved_step = self._last_global_step_saved
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            self._last_global_step_saved = saved_step

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


_TYPE_NAMES = {"<class 'int'>": "an integer", "<class 'float'>": "a number", "<class 'str'>": "a string",
               "<class 'bool'>": "true or false", "<class 'NoneType'>": "null"}


def _class_parameters(class_path: str) -> list[str]:
    """Constructor parameter names of ``class_path`` (for spelling suggestions), or [] when it cannot be imported."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        return [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
    except (ImportError, AttributeError, TypeError, ValueError):
        return []


def _suggest(key: str, candidates: list[str]) -> str:
    leaf = key.rsplit(".", 1)[-1]
    prefix = key[: len(key) - len(leaf)]
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.75)
    if not close:
        leaves = {c.rsplit(".", 1)[-1]: c for c in candidates if c.startswith(prefix)}
        close = [leaves[m] for m in difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.6)]
        if close and not close[0].startswith(prefix):
            close = []
    return f" (did you mean '{close[0]}'?)" if close else ""


def explain_config_error(message: str, known_keys: list[str], prog: str = "tools/train.py") -> str:
    """One paragraph for a jsonargparse error: the offending key, what is wrong with it, and the fix.

    Args:
        message: the parser's error message (nested for class_path arguments).
        known_keys: the parser's dotted keys, for "did you mean" suggestions.
        prog: the command, for the ``--help`` hint.
    """
    help_hint = f"`python {prog} CONFIG --help` lists every key with its type"
    unknown = re.match(r"unrecognized arguments: (.*)", message.strip(), re.S)
    if unknown:
        keys = [a[2:].split("=", 1)[0] for a in unknown.group(1).split() if a.startswith("--")] or [unknown.group(1)]
        key = keys[0]
        return (f"error: unknown config key '{key}'. Fix: remove it or correct its spelling"
                f"{_suggest(key, known_keys)}; {help_hint}.")
    subcommand = re.search(r"does not accept option '([^']+)'", message)
    if subcommand:
        key = subcommand.group(1)
        return (f"error: unknown config key '{key}'. Fix: remove it from CONFIG or correct its spelling"
                f"{_suggest(key, known_keys)}; {help_hint}.")
    path: list[str] = []
    class_path = None
    for line in message.splitlines():
        line = line.strip()
        if m := re.match(r'Parser key "([^"]+)":', line):
            path.append(m.group(1))
        elif m := re.match(r"Problem with given class_path '([^']+)':", line):
            path.append("init_args")
            class_path = m.group(1)
        elif m := re.match(r"Option '([^']+)' is not accepted", line):
            key = ".".join([*path, m.group(1)])
            params = _class_parameters(class_path) if class_path else []
            candidates = [".".join([*path, p]) for p in params]
            owner = f" ({class_path} has no such argument)" if class_path else ""
            return (f"error: unknown config key '{key}'{owner}. Fix: remove it or correct its spelling"
                    f"{_suggest(key, candidates)}; {help_hint}.")
    if path and path[-1] == "init_args":
        path.pop()
    key = ".".join(path)
    got = re.search(r"(?:Got value|Given value): (.*)", message)
    got_text = f", got {got.group(1).strip()!r}" if got else ""
    subtypes = re.search(r"Subtypes: \[(.*)\]", message)
    expected = re.search(r"Expected a (.*?)(?:\. Got value|$)", message, re.M)
    if subtypes:
        names = [_TYPE_NAMES.get(t.strip(), t.strip()) for t in re.findall(r"<class '[^']+'>|typing\.\w+\[[^]]*\]",
                                                                             subtypes.group(1))]
        want = " or ".join(names) if names else subtypes.group(1)
    elif expected:
        want = _TYPE_NAMES.get(expected.group(1).strip(), expected.group(1).strip())
    else:
        want = None
    if want and (lit := re.fullmatch(r"typing\.Literal\[(.*)\]", want)):
        want = f"one of {lit.group(1)}"
    if key and want:
        flag = "--" + key
        return (f"error: config key '{key}' expects {want}{got_text}. Fix: give {key} a value of that type (in "
                f"CONFIG, or {flag} VALUE on the command line); {help_hint}.")
    detail = " ".join(message.split())
    return f"error: {'config key ' + repr(key) + ': ' if key else ''}{detail}. Fix: {help_hint}."


class VitkitArgumentParser(LightningArgumentParser):
    """Parser whose errors are one paragraph (:func:`explain_config_error`) instead of a usage wall."""
    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        try:
            known = list(parser.get_defaults().keys())
        except Exception:  # suggestions are a nicety; the message itself must come out
            known = []
        sys.stderr.write(explain_config_error(str(message), known) + "\n")
        self.exit(2)


class VitkitCLI(LightningCLI):
    """LightningCLI with vitkit's links and run-folder defaults, safe checkpoint I/O and exact resume."""
    def __init__(self, *args, run_name: str = "run", launch_argv: list[str] | None = None, **kwargs) -> None:
        self.run_name = run_name
        self.launch_argv = launch_argv
        kwargs.setdefault("parser_class", VitkitArgumentParser)
        super().__init__(*args, **kwargs)

    def _parse_ckpt_path(self) -> None:
        """LightningCLI reads ``--ckpt_path``'s hyper-parameters while parsing (``torch.load(weights_only=True)``); a
        refused or unreadable file gets :func:`vitkit.utils.checkpoints.safe_load_checkpoint`'s message, not torch's."""
        try:
            super()._parse_ckpt_path()
        except Exception:  # torch's unpickling errors, or bytes that are no checkpoint at all
            subcommand = self.config.get("subcommand")
            ckpt = self.config[subcommand].get("ckpt_path") if subcommand else None
            if ckpt:
                safe_load_checkpoint(ckpt)  # raises a CheckpointError naming the file and the reason
            raise

    def instantiate_classes(self) -> None:
        """Build the data, model and trainer; a constructor's complaint (a missing data folder, a bad value) becomes
        a :class:`ConfigError` that :func:`main` prints as one paragraph."""
        try:
            super().instantiate_classes()
        except ConfigError:
            raise
        except (FileNotFoundError, NotADirectoryError, ValueError) as err:
            raise ConfigError(str(err)) from err

    def _instantiate_trainer(self, config, callbacks):
        callbacks = [*callbacks, ExactResume()]
        trainer = super()._instantiate_trainer(config, callbacks)
        install_safe_checkpoint_io(trainer)
        return trainer

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
            "checkpoint.last_every_n_train_steps": 1000,
            "trainer.logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": "runs", "name": self.run_name}},
        })

    def add_arguments_to_parser(self, parser) -> None:
        self._add_run_defaults(parser)
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.detector.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        parser.link_arguments("data.label_to_cat_id", "model.label_to_cat_id", apply_on="instantiate")

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
        self._restore_launch_argv()
        self._check_ckpt_path()
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
        self._check_ckpt_path()
        captioner = _to_plain(self.config[self.subcommand]["model"]["captioner"])
        init_args = captioner.setdefault("init_args", {})
        for name in CAPTION_LINKS:
            init_args[name] = getattr(self.datamodule, name)
        init_args["max_length"] = self.datamodule.hparams.max_length
        self.model.captioner_config = captioner


def is_caption_config(config: str | Path) -> bool:
    """Whether a YAML recipe trains captioning: its ``model`` section has a ``captioner`` entry."""
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
    try:
        cli.trainer.validate(cli.model, datamodule=cli.datamodule, ckpt_path=str(ckpt), verbose=False)
    except RuntimeError as err:
        mismatch = _weights_mismatch(err, config, "--ckpt")
        if mismatch is None:
            raise
        raise ConfigError(mismatch) from err
    return cli.model.last_eval, cli.model.last_results, cli.trainer.is_global_zero


def validate_weights(config: str | Path, weights: str | Path, overrides: list[str] | tuple = ()):
    """Evaluate official DETR weights (:mod:`vitkit.detection.official_weights`) on the validation split of ``config``
    (a DETR-R50 config such as ``configs/detr_r50_coco.yaml``). The class head is narrowed to the data's category
    ids (the COCO release has one logit per category id). Returns what :func:`validate_checkpoint` returns."""

    try:
        state, info = read_detr_weights(weights)  # a refused or unreadable file: CheckpointError, as for --ckpt
    except CheckpointError:
        raise
    except (FileNotFoundError, ValueError) as err:  # no weights in a folder, or not a DETR layout
        raise ConfigError(f"--weights {weights}: {err}. Fix: give a facebookresearch/detr .pth, or Hugging Face DETR "
                          "model.safetensors / pytorch_model.bin or the folder that holds one") from err
    with _own_argv():
        cli = VitkitCLI(DetectionModule, CocoDataModule, run=False, run_name=Path(config).stem,
                        save_config_callback=None,
                        args=["--config", str(config), "--trainer.logger", "false", *overrides])
    try:
        state = select_classes(state, list(cli.datamodule.label_to_cat_id))
    except ValueError as err:
        raise ConfigError(f"--weights {weights}: {err}; the weights hold {info['num_classes']} classes") from err
    try:
        cli.model.detector.load_state_dict(state)
    except RuntimeError as err:
        raise ConfigError(_weights_mismatch(err, config, "--weights") or str(err)) from err
    cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
    return cli.model.last_eval, cli.model.last_results, cli.trainer.is_global_zero


def _weights_mismatch(err: RuntimeError, config: str | Path, key: str) -> str | None:
    """The paragraph for ``load_state_dict``'s size/key mismatch wall, or None for another RuntimeError."""
    if "Error(s) in loading state_dict" not in str(err):
        return None
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    detail = " ".join(lines[1:3])[:300]
    return (f"{key}: the checkpoint's weights do not fit the model that {config} builds ({detail} ...). Fix: use the "
            "config the checkpoint was trained with (runs/<config>/version_*/config.yaml holds it), or start a new "
            "run")


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
    try:
        with _own_argv():
            cli_class(model_class, data_class, run_name=config.stem, save_config_kwargs={"overwrite": True},
                      launch_argv=launch_argv, args=["fit", "--config", str(config), *argv[1:]])
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
        mismatch = _weights_mismatch(err, config, "ckpt_path")
        if mismatch is None:
            raise
        print(f"error: {mismatch}", file=sys.stderr)
        raise SystemExit(2) from None
