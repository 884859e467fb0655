"""Vitkit's sides of the learning race: a run config trained exactly as ``python tools/train.py CONFIG`` trains it,
inside a training budget, and evaluated at the reported minutes.

The run goes through the training command's own LightningCLI class (:func:`vitkit.cli.train.select_task`: the same
LightningModule, datamodule, links, optimizer, schedule, precision fallback, exact-resume callback), with the
config's settings as they are and only these overrides, which change no training computation:

- ``seed_everything``, ``data.root`` and the shapes generator's arguments (the race's data);
- ``trainer.max_epochs`` very large: the budget stops the run (:class:`~benchmarks.learning_budget.BudgetCallback`),
  and the step schedule is re-sized to the budget (see :mod:`benchmarks.learning`), its warmup the same share of
  the budget's steps as the config's ``warmup_steps`` are of its own ``max_epochs`` (``budget_warmup``);
- no validation loop, sanity check, logger, progress bar, model summary, config file or checkpoint file: the race
  evaluates with the clock paused, and writes nothing under ``runs/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch

from benchmarks.learning_budget import BudgetCallback
from vitkit.cli.configs import read_config, resolve_config
from vitkit.cli.train import own_argv, select_task
from vitkit.eval.caption_metrics import CaptionScorer
from vitkit.eval.coco_eval import evaluate_coco

EVAL_BACKEND = "pycocotools"  # the reference COCOeval, for every side


@dataclass
class DataSpec:
    """The race's data: a COCO-layout root and the shapes generator's arguments it was made with (None: not a
    generated set, or the config's own)."""

    root: Path
    shapes: dict[str, int] | None = None


def cli_args(config: Path, data: DataSpec, seed: int, work_dir: Path) -> list[str]:
    """The ``fit`` arguments of a race run: the config, then the overrides listed in the module docstring."""
    args = ["fit", "--config", str(config), f"--seed_everything={seed}", f"--data.root={data.root}"]
    if data.shapes is not None:
        args += [f"--data.shapes_train={data.shapes['num_train']}", f"--data.shapes_val={data.shapes['num_val']}",
                 f"--data.shapes_size={data.shapes['image_size']}", f"--data.shapes_seed={data.shapes['seed']}"]
    args += ["--trainer.max_epochs=1000000", "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0",
             "--trainer.logger=false", "--trainer.enable_progress_bar=false",
             "--trainer.enable_model_summary=false", f"--trainer.default_root_dir={work_dir}",
             f"--checkpoint.dirpath={work_dir / 'checkpoints'}", "--checkpoint.save_top_k=0",
             "--checkpoint.save_last=false", "--checkpoint.monitor=null", "--checkpoint.last_every_n_train_steps=0"]
    return args


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def detection_metrics(results: list[dict[str, Any]], ann_file: str | Path) -> dict[str, float]:
    """COCO AP and AP50 (pycocotools, every image of the annotation file) of COCO result entries."""
    stats = evaluate_coco(str(ann_file), results, backend=EVAL_BACKEND).stats
    return {"AP": float(stats["AP"]), "AP50": float(stats["AP50"])}


def caption_scores(scorer: CaptionScorer, captions: dict[int, str], references: dict[int, list[str]],
                   prefix: str = "") -> dict[str, float]:
    """BLEU-4 and CIDEr-D of ``captions`` against ``references`` (keys prefixed with ``prefix``)."""
    scores = scorer({i: references[i] for i in captions}, captions)
    return {f"{prefix}Bleu_4": float(scores["Bleu_4"]), f"{prefix}CIDEr": float(scores["CIDEr"])}


def _eval_detection(trainer: L.Trainer, module: L.LightningModule) -> dict[str, float]:
    """The validation split through the detector and its post-processor (``DetectionModule.result_entries``)."""
    dm = trainer.datamodule
    results = []
    for images, mask, targets in dm.val_dataloader():
        results += module.result_entries(images.to(module.device), mask.to(module.device), targets)[0]
    return detection_metrics(results, dm.val_annotation_file)


def _eval_captions(scorer: CaptionScorer):
    def evaluate(trainer: L.Trainer, module: L.LightningModule) -> dict[str, float]:
        """The validation split captioned as the config's validation does (``model.val_beams``) and greedily."""
        dm, hp = trainer.datamodule, module.hparams
        val_caps: dict[int, str] = {}
        greedy_caps: dict[int, str] = {}
        references: dict[int, list[str]] = {}
        for images, mask, refs, image_ids in dm.val_dataloader():
            images, mask = images.to(module.device), mask.to(module.device)
            val_caps.update(zip(image_ids, module.generate(images, mask), strict=True))
            ids, _ = module.captioner.generate(images, mask, method="greedy", max_length=hp.val_max_length)
            greedy_caps.update(zip(image_ids, module.tokenizer.decode_batch(ids.cpu()), strict=True))
            references.update(zip(image_ids, refs, strict=True))
        return {**caption_scores(scorer, val_caps, references),
                **caption_scores(scorer, greedy_caps, references, prefix="greedy_")}

    return evaluate


def run_vitkit(task: str, config: str | Path, data: DataSpec, minutes: float, eval_every: float, seed: int,
               threads: int, work_dir: Path, scorer: CaptionScorer | None = None) -> tuple[dict[str, Any], dict]:
    """Train and evaluate one vitkit side.

    Args:
        task: "detection" or "captions" (must be the config's task).
        config: a run config path or a shipped config's name.
        data, minutes, eval_every, seed, threads: the race's settings.
        work_dir: a scratch folder (the trainer's root; nothing is written there by default).
        scorer: the caption scorer (captions only).

    Returns:
        The side's record (curve, parameters, step time, settings) and what its peer takes over from the resolved
        config: ``batch_size``, ``num_workers``; detection: ``num_classes``; captions: the datamodule's
        ``tokenizer``, ``max_length`` and ``hflip_p``.
    """
    path = resolve_config(config)
    cli_class = select_task(read_config(path), path)
    want = "captioning" if task == "captions" else task
    if cli_class.task != want:
        raise ValueError(f"{path} trains {cli_class.task}, not {want}")
    evaluate = _eval_detection if task == "detection" else _eval_captions(scorer)
    recipe_epochs = (read_config(path).get("trainer") or {}).get("max_epochs")
    callback = BudgetCallback(minutes, eval_every, evaluate, threads, recipe_epochs=recipe_epochs)
    torch.set_num_threads(threads)
    args = cli_args(path, data, seed, work_dir)
    with own_argv():
        cli = cli_class(run_name=path.stem, args=args, save_config_callback=None,
                        trainer_defaults={"callbacks": [callback]})
    if callback.run is None or not callback.run.points:
        raise RuntimeError(f"vitkit {task}: training ended before the budget was spent (no point recorded)")
    network = cli.model.detector if task == "detection" else cli.model.captioner
    dm = cli.datamodule
    record = {
        "side": "vitkit",
        "config": str(path),
        "cli_args": args,
        "parameters": count_parameters(network),
        "precision": str(cli.trainer.precision),
        "threads_seen": callback.threads_seen,
        "batch_size": int(dm.hparams.batch_size),
        "optimizer": {"name": "AdamW (vitkit.train.optim.adamw)", "lr": float(cli.model.hparams.lr),
                      "weight_decay": float(cli.model.hparams.weight_decay),
                      "warmup_steps": int(cli.model.hparams.warmup_steps), "recipe_epochs": recipe_epochs,
                      "budget_warmup_steps": callback.warmups[-1] if callback.warmups else None,
                      "min_lr_ratio": float(cli.model.hparams.min_lr_ratio),
                      "gradient_clip_val": cli.trainer.gradient_clip_val},
        **callback.run.summary(),
    }
    handoff: dict[str, Any] = {"batch_size": int(dm.hparams.batch_size), "num_workers": int(dm.hparams.num_workers)}
    if task == "captions":
        record["val_beams"] = int(cli.model.hparams.val_beams)
        handoff.update(tokenizer=dm.tokenizer, max_length=int(dm.hparams.max_length), hflip_p=float(dm.hparams.hflip_p))
    else:
        handoff["num_classes"] = int(dm.num_classes)
    return record, handoff
