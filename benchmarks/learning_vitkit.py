"""Vitkit's sides of the learning race: a run config trained by the ``vitkit train`` command itself, inside a
training budget, and evaluated at the reported minutes.

The run is ``vitkit train CONFIG`` (:func:`vitkit.cli.main.main`, in this process: the same LightningModule,
datamodule, links, optimizer, schedule, precision fallback, exact-resume callback as a user's run), with the
config's settings as they are and only these overrides, which change no training computation:

- ``seed_everything``, ``data.root`` and the shapes generator's arguments (the race's data);
- ``trainer.max_epochs`` very large: the budget stops the run (:class:`RaceCallback`, added with
  ``--trainer.callbacks+=``), and the step schedule is re-sized to the budget (see :mod:`benchmarks.learning`), its
  warmup the same share of the budget's steps as the config's ``warmup_steps`` are of its own ``max_epochs``
  (``budget_warmup``);
- no validation loop, sanity check, logger, progress bar, model summary or checkpoint file: the race evaluates
  with the clock paused, and writes nothing under ``runs/`` (the resolved config goes to the scratch folder).

The callback writes what the race records and what the peer takes over (``race.json``, and the caption
datamodule's ``tokenizer.json``) into the scratch folder; :func:`run_vitkit` reads them back.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml

from benchmarks.learning_budget import BudgetCallback
from vitkit.captioning import CaptionTokenizer
from vitkit.cli.main import main as vitkit_command
from vitkit.eval import evaluate_coco
from vitkit.eval.caption_metrics import CaptionScorer

EVAL_BACKEND = "pycocotools"  # the reference COCOeval, for every side


@dataclass
class DataSpec:
    """The race's data: a COCO-layout root and the shapes generator's arguments it was made with (None: not a
    generated set, or the config's own)."""

    root: Path
    shapes: dict[str, int] | None = None


def train_args(config: str | Path, data: DataSpec, seed: int, work_dir: Path) -> list[str]:
    """The ``vitkit train`` arguments of a race run: the config, then the overrides listed in the module docstring
    (the budget callback is added by :func:`run_vitkit`)."""
    args = [str(config), f"--seed_everything={seed}", f"--data.root={data.root}"]
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
        dm = trainer.datamodule
        val_caps: dict[int, str] = {}
        greedy_caps: dict[int, str] = {}
        references: dict[int, list[str]] = {}
        for images, mask, refs, image_ids in dm.val_dataloader():
            images, mask = images.to(module.device), mask.to(module.device)
            val_caps.update(zip(image_ids, module.generate(images, mask), strict=True))
            ids, _ = module.captioner.generate(images, mask, method="greedy")  # up to the captioner's max_length
            greedy_caps.update(zip(image_ids, module.tokenizer.decode_batch(ids.cpu()), strict=True))
            references.update(zip(image_ids, refs, strict=True))
        return {**caption_scores(scorer, val_caps, references),
                **caption_scores(scorer, greedy_caps, references, prefix="greedy_")}

    return evaluate


class RaceCallback(BudgetCallback):
    """The budget callback of a vitkit side, built by ``vitkit train`` from ``--trainer.callbacks+=`` (so its
    arguments are plain values): evaluates the ``task`` with the clock paused, and at the end of the fit writes
    ``out_dir/race.json`` (the side's record and what its peer takes over) and, for captions, the datamodule's
    tokenizer as ``out_dir/tokenizer.json``.

    Args:
        task: "detection" or "captions" (the config's task: :func:`run_vitkit` checks it first).
        minutes, eval_every, threads, recipe_epochs: as :class:`~benchmarks.learning_budget.BudgetCallback`.
        out_dir: where the record goes (the run's scratch folder).
        java: Java for the caption scorer (None: whether ``java`` is on PATH).
    """

    def __init__(self, task: str, minutes: float, eval_every: float, threads: int, out_dir: str,
                 recipe_epochs: int | None = None, java: bool | None = None) -> None:
        if task not in ("detection", "captions"):
            raise ValueError(f"task {task!r}: 'detection' or 'captions'")
        self.scorer = CaptionScorer(java) if task == "captions" else None
        evaluate = _eval_detection if task == "detection" else _eval_captions(self.scorer)
        super().__init__(minutes, eval_every, evaluate, threads, recipe_epochs=recipe_epochs)
        self.task, self.out_dir = task, Path(out_dir)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.scorer is not None:
            self.scorer.close()
        if self.run is None or not self.run.points:
            return
        dm, hp = trainer.datamodule, pl_module.hparams
        network = pl_module.detector if self.task == "detection" else pl_module.captioner
        record = {
            "parameters": count_parameters(network),
            "precision": str(trainer.precision),
            "threads_seen": self.threads_seen,
            "batch_size": int(dm.hparams.batch_size),
            "optimizer": {"name": "AdamW (vitkit.training.optim.adamw)", "lr": float(hp.lr),
                          "weight_decay": float(hp.weight_decay), "warmup_steps": int(hp.warmup_steps),
                          "recipe_epochs": self.recipe_epochs,
                          "budget_warmup_steps": self.warmups[-1] if self.warmups else None,
                          "min_lr_ratio": float(hp.min_lr_ratio), "gradient_clip_val": trainer.gradient_clip_val},
            **self.run.summary(),
        }
        handoff: dict[str, Any] = {"batch_size": int(dm.hparams.batch_size), "num_workers": int(dm.hparams.num_workers)}
        if self.task == "captions":
            record["val_beams"] = int(hp.val_beams)
            handoff.update(max_length=int(dm.hparams.max_length), hflip_p=float(dm.hparams.hflip_p))
            dm.tokenizer.save(self.out_dir / "tokenizer.json")
        else:
            handoff["num_classes"] = int(dm.num_classes)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "race.json").write_text(json.dumps({"record": record, "handoff": handoff}, indent=1) + "\n")


def vitkit_train(args: list[str]) -> str:
    """``vitkit train ARGS`` in this process, through the public command (:func:`vitkit.cli.main.main`): what it
    printed on stdout.

    Raises:
        RuntimeError: the command failed (its status; its message is on stderr).
    """
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            status = vitkit_command(["train", *args])
    except SystemExit as stop:  # the parser's and --print_config's way out
        status = stop.code
    if status not in (0, None):
        raise RuntimeError(f"vitkit train {' '.join(args)}: exit status {status} (the reason is on stderr)")
    return out.getvalue()


def run_vitkit(task: str, config: str | Path, data: DataSpec, minutes: float, eval_every: float, seed: int,
               threads: int, work_dir: Path, scorer: CaptionScorer | None = None) -> tuple[dict[str, Any], dict]:
    """Train and evaluate one vitkit side.

    Args:
        task: "detection" or "captions" (must be the config's task).
        config: a run config path or a shipped config's name.
        data, minutes, eval_every, seed, threads: the race's settings.
        work_dir: a scratch folder (the trainer's root, the resolved config, the record the callback writes).
        scorer: the caption scorer of the race (captions only): the side scores with one of the same kind (its
            ``java`` setting), built by its callback.

    Returns:
        The side's record (curve, parameters, step time, settings) and what its peer takes over from the resolved
        config: ``batch_size``, ``num_workers``; detection: ``num_classes``; captions: the datamodule's
        ``tokenizer``, ``max_length`` and ``hflip_p``.
    """
    resolved = yaml.safe_load(vitkit_train([str(config), "--print_config"]))  # nothing trained
    want = "captioning" if task == "captions" else task
    if resolved.get("task") != want:
        raise ValueError(f"{config} trains {resolved.get('task')}, not {want}")
    recipe_epochs = (resolved.get("trainer") or {}).get("max_epochs")
    callback = {"class_path": "benchmarks.learning_vitkit.RaceCallback",
                "init_args": {"task": task, "minutes": minutes, "eval_every": eval_every, "threads": threads,
                              "out_dir": str(work_dir), "recipe_epochs": recipe_epochs,
                              "java": None if scorer is None else scorer.java}}
    args = train_args(config, data, seed, work_dir)
    torch.set_num_threads(threads)
    (work_dir / "race.json").unlink(missing_ok=True)
    vitkit_train([*args, f"--trainer.callbacks+={json.dumps(callback)}"])
    if not (work_dir / "race.json").is_file():
        raise RuntimeError(f"vitkit {task}: training ended before the budget was spent (no point recorded)")
    written = json.loads((work_dir / "race.json").read_text())
    record = {"side": "vitkit", "config": str(config), "cli_args": ["train", *args], **written["record"]}
    handoff = written["handoff"]
    if task == "captions":
        handoff["tokenizer"] = CaptionTokenizer.from_file(work_dir / "tokenizer.json")
    return record, handoff
