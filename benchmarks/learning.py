"""The learning race: vitkit's shapes recipes against Hugging Face peers trained from scratch, in one run, on the
same machine, the same generated data and the same training wall-clock budget per side.

    python -m benchmarks.learning --minutes 15                # both races, data/shapes (600 train / 100 val)
    python -m benchmarks.learning --quick                     # smoke test: tiny data, 0.5 min per side

Races (the sides run one after the other; vitkit first, as the caption peer reuses its tokenizer):

- detection: ``configs/detr_shapes.yaml`` (``--det-config``) against ``RTDetrForObjectDetection``;
- captions: ``configs/caption_shapes.yaml`` (``--cap-config``) against ``VisionEncoderDecoderModel`` (ViT + GPT-2).

Vitkit's sides train exactly as ``python tools/train.py CONFIG`` does (:mod:`benchmarks.learning_vitkit`); the peers
and their data pipelines are described in :mod:`benchmarks.learning_peers`. Peer optimisation (plain PyTorch loop,
batch size = the vitkit config's ``data.batch_size``, loader workers = its ``data.num_workers``):

- RT-DETR: AdamW lr 1e-4, betas (0.9, 0.999), weight decay 1e-4 (none on biases and norm weights, as RT-DETR's
  parameter groups), gradient-norm clip 0.1, one lr for all parameters (nothing is pretrained, so no 0.1x backbone
  lr); RT-DETR's warmup + constant lr is replaced by warmup + cosine so that every side anneals by the budget's end.
- ViT + GPT-2: AdamW lr 1e-4 (``--ved-lr``), weight decay 0.01 (none on biases and norm weights), gradient-norm clip
  1.0 (the Hugging Face Trainer's default), warmup + cosine.
- both: warmup = 5% of the estimated total steps (200 steps until the first estimate), cosine to 1% of the peak lr
  (:func:`vitkit.training.optim.warmup_schedule`); ``--peer-precision`` fp32 (default, Hugging Face's) or bf16-mixed
  (CPU autocast).

Budget rules, the same for every side (:mod:`benchmarks.learning_budget`):

- ``--minutes M`` of training wall clock per side. The clock starts when training starts (just before the first
  batch is asked for, so loader start-up counts) and counts everything until the step that reaches M ends: data
  loading, forward, backward, optimizer and schedule steps, epoch ends. It is paused during evaluations, whose time is
  recorded separately. Model building, data indexing and tokenizer training happen before the clock starts.
- Reported points: the initialised model (minute 0, before the clock starts), then after the first optimizer step at
  or past every ``--eval-every`` minutes (default: M / 5 rounded up to 0.5 min, to 0.1 min under 2.5 min) and after
  the step that reaches M (so the last step overshoots M by less than its own duration, recorded as
  ``last_step_seconds``). A point holds the training minutes elapsed, the (fractional) epoch, the optimizer steps,
  the metrics and the evaluation's seconds.
- lr schedules end with the budget: after the first 20 optimizer steps, and again every 5% of the budget, each side's
  total step count is estimated as steps done + remaining budget / mean step time so far, and its per-step lr factor
  is rebuilt for that total (step counter kept). Vitkit's factor is its own ``warmup_schedule`` with the config's
  ``min_lr_ratio`` and ``schedule`` (what ``TaskModule.configure_optimizers`` builds from
  ``trainer.estimated_stepping_batches``), and a warmup that keeps the recipe's share: the config's ``warmup_steps``
  over its ``max_epochs`` of steps, times the estimated total; its ``trainer.max_epochs`` is set very large and the
  budget stops it. The estimate is also the module's ``total_steps``, which the caption recipe's step shares
  (``model.scst_start``, ``model.low_res_until``) refer to. Cheaper low-resolution steps early make the first
  estimates high; the later ones, from the mean step time so far, bring them down.
- Metrics: detection: COCO AP and AP50 from :func:`vitkit.eval.coco_eval.evaluate_coco` (reference pycocotools,
  on the original val annotation file, every val image). Captions: BLEU-4 and CIDEr-D from vitkit's
  :class:`~vitkit.eval.caption_metrics.CaptionScorer` (one scorer for all sides; ``--java``) on the val split;
  vitkit decodes as its config's validation does (``model.val_beams``: ``Bleu_4``, ``CIDEr``) and greedily
  (``greedy_Bleu_4``, ``greedy_CIDEr``); the peer greedily (``Bleu_4``, ``CIDEr``).
- Same torch thread count (``--threads``) and seed (``--seed``: vitkit's ``seed_everything``, the peers' torch /
  random / numpy seeds) for all sides.

What is not equal between the sides (read the numbers with it): vitkit trains at its config's precision
(bf16-mixed where the CPU has native bf16, else the CLI's 32-true fallback, recorded as ``precision``) while the peers
train in fp32 unless ``--peer-precision bf16-mixed``; vitkit's recipes were tuned on this data set, the peers' lrs are
their usual ones, untuned; vitkit resizes multi-scale (short side 160-224: per image for detection, per batch for
captions) with a padding mask and batches images of alike aspect ratio (captions), the peers see one fixed
letterboxed square (RT-DETR's own recipe is multi-scale around 640 px, with EMA); vitkit's steps carry Lightning's
per-step hooks, logging and its exact-resume seeding. The sides run one after the other, so a change in machine
load hits one side only: run on an otherwise idle machine.

Writes ``--json-out`` (machine, settings, per task and side: the curve of points, parameter count, step time,
epochs, optimizer and model settings) and ``--plot`` (PNG: AP and CIDEr-D against training minutes), and prints a
table. Peers install with ``pip install -e ".[bench]"``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import learning_peers as peers
from benchmarks.common import require
from benchmarks.learning_budget import BudgetRun, default_eval_every, factor_of, install_factor, train_mode_restored
from benchmarks.learning_output import machine_facts, plot, table
from benchmarks.learning_vitkit import DataSpec, caption_scores, count_parameters, detection_metrics, run_vitkit
from vitkit.data import ensure_shapes
from vitkit.eval.caption_metrics import CaptionScorer

TASKS = ("detection", "captions")
PEER_WARMUP_FRACTION, PEER_FIRST_WARMUP, PEER_MIN_LR_RATIO = 0.05, 200, 0.01
DEFAULT_ROOT, DEFAULT_SHAPES = Path("data/shapes"), {"num_train": 600, "num_val": 100, "image_size": 192, "seed": 0}


def _autocast(precision: str):
    if precision == "bf16-mixed":
        return functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def adamw_no_decay_norms(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with ``weight_decay`` on matrices and kernels, none on biases and norm weights (1-D parameters)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.999))


def peer_factor(total: int) -> Any:
    warmup = round(PEER_WARMUP_FRACTION * total)
    return factor_of(total, warmup, PEER_MIN_LR_RATIO)


def train_peer(model: torch.nn.Module, loader: Any, loss_fn: Any, optimizer: torch.optim.Optimizer, clip: float,
               run: BudgetRun, autocast: Any) -> None:
    """The peers' training loop: epochs of ``loss_fn(batch)`` steps until ``run`` says the budget is spent."""
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor_of(10**9, PEER_FIRST_WARMUP, PEER_MIN_LR_RATIO))
    run.resize = lambda total: install_factor(scheduler, peer_factor(total))
    run.steps_per_epoch = len(loader)
    model.train()
    run.start()
    while True:
        for batch in loader:
            with autocast():
                loss = loss_fn(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"peer loss is {float(loss)} at step {run.steps + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            scheduler.step()
            if run.after_step():
                return


def _evaluator(model: torch.nn.Module, metrics: Any) -> Any:
    def evaluate() -> dict[str, float]:
        restore = train_mode_restored(model)
        model.eval()
        try:
            with torch.no_grad():
                return metrics()
        finally:
            restore()

    return evaluate


def run_rtdetr(args: argparse.Namespace, data: DataSpec, vitkit: dict[str, Any], size: int) -> dict[str, Any]:
    """Train and evaluate the RT-DETR side (``vitkit``: what :func:`run_vitkit` hands over)."""
    batch_size, workers = vitkit["batch_size"], vitkit["num_workers"]
    _seed_all(args.seed)
    model = peers.build_rtdetr(vitkit["num_classes"])
    train_loader, val_loader = peers.rtdetr_loaders(data.root, size, batch_size, workers)
    cat_ids, processor = val_loader.dataset.cat_ids, peers.rtdetr_processor()
    autocast = _autocast(args.peer_precision)
    lr, wd, clip = 1e-4, 1e-4, 0.1
    optimizer = adamw_no_decay_norms(model, lr, wd)

    def metrics() -> dict[str, float]:
        results = peers.rtdetr_results(model, processor, val_loader, cat_ids, autocast)
        return detection_metrics(results, data.root / "annotations" / "instances_val2017.json")

    run = BudgetRun(args.minutes, args.eval_every, _evaluator(model, metrics), resize=lambda total: None)
    train_peer(model, train_loader, lambda b: model(pixel_values=b[0], labels=b[1]).loss, optimizer, clip, run,
               autocast)
    return {"side": "rtdetr", "model": "transformers.RTDetrForObjectDetection",
            "config": peers.rtdetr_config_summary(model), "parameters": count_parameters(model),
            "precision": args.peer_precision, "threads_seen": torch.get_num_threads(), "batch_size": batch_size,
            "input_size": size, **_peer_optimizer(lr, wd, clip), **run.summary()}


def _peer_optimizer(lr: float, weight_decay: float, clip: float) -> dict[str, Any]:
    return {"optimizer": {"name": "torch.optim.AdamW", "lr": lr, "betas": [0.9, 0.999], "weight_decay": weight_decay,
                          "no_decay": "biases and norm weights", "gradient_clip_norm": clip,
                          "schedule": f"linear warmup over {PEER_WARMUP_FRACTION:.0%} of the estimated steps, cosine "
                                      f"to {PEER_MIN_LR_RATIO} x lr"}}


def run_ved(args: argparse.Namespace, data: DataSpec, vitkit: dict[str, Any], size: int,
            scorer: CaptionScorer) -> dict[str, Any]:
    """Train and evaluate the ViT + GPT-2 side, on the vitkit caption datamodule's tokenizer (``vitkit``: what
    :func:`run_vitkit` hands over)."""
    tokenizer, max_length, batch_size = vitkit["tokenizer"], vitkit["max_length"], vitkit["batch_size"]
    _seed_all(args.seed)
    model = peers.build_ved(tokenizer, max_length, size)
    train_loader, val_loader, references = peers.ved_loaders(data.root, size, batch_size, vitkit["num_workers"],
                                                             tokenizer, max_length, vitkit["hflip_p"])
    autocast = _autocast(args.peer_precision)
    wd, clip = 0.01, 1.0
    optimizer = adamw_no_decay_norms(model, args.ved_lr, wd)

    def metrics() -> dict[str, float]:
        captions = peers.ved_captions(model, val_loader, tokenizer, max_length, autocast)
        return caption_scores(scorer, captions, references)

    run = BudgetRun(args.minutes, args.eval_every, _evaluator(model, metrics), resize=lambda total: None)
    train_peer(model, train_loader, lambda b: peers.ved_loss(model, b[0], b[1], tokenizer.pad_id), optimizer, clip,
               run, autocast)
    enc, dec = model.config.encoder, model.config.decoder
    config = {"encoder": {k: getattr(enc, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                        "intermediate_size", "patch_size", "image_size")},
              "decoder": {k: getattr(dec, k) for k in ("n_embd", "n_layer", "n_head", "n_inner", "n_positions",
                                                        "vocab_size", "resid_pdrop")}}
    return {"side": "ved", "model": "transformers.VisionEncoderDecoderModel (ViTModel + GPT2LMHeadModel)",
            "config": config, "parameters": count_parameters(model), "precision": args.peer_precision,
            "threads_seen": torch.get_num_threads(), "batch_size": batch_size, "input_size": size,
            "decoding": f"greedy, max_length {max_length}", **_peer_optimizer(args.ved_lr, wd, clip),
            **run.summary()}


def race(task: str, args: argparse.Namespace, data: DataSpec, size: int, work: Path,
         scorer: CaptionScorer | None) -> dict[str, Any]:
    """One race: vitkit's side, then its peer's."""
    config = args.det_config if task == "detection" else args.cap_config
    print(f"[{task}] vitkit ({config}), {args.minutes:g} min", flush=True)
    vk, handoff = run_vitkit(task, config, data, args.minutes, args.eval_every, args.seed, args.threads,
                             work / f"{task}_vitkit", scorer)
    name = "rtdetr" if task == "detection" else "ved"
    print(f"[{task}] {name}, {args.minutes:g} min", flush=True)
    torch.set_num_threads(args.threads)
    if task == "detection":
        return {"vitkit": vk, name: run_rtdetr(args, data, handoff, size)}
    return {"vitkit": vk, name: run_ved(args, data, handoff, size, scorer)}


def _java(choice: str) -> bool | None:
    return {"auto": None, "on": True, "off": False}[choice]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.learning", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=15.0, help="training budget per side (default 15)")
    p.add_argument("--eval-every", type=float, default=None, help="minutes between evaluations (default: M/5 "
                   "rounded up to 0.5; 0.1 under 2.5 min)")
    p.add_argument("--tasks", default="detection,captions", help="comma-separated: detection, captions")
    p.add_argument("--det-config", default="configs/detr_shapes.yaml")
    p.add_argument("--cap-config", default="configs/caption_shapes.yaml")
    p.add_argument("--data-root", type=Path, default=None, help="COCO-layout root (default data/shapes, or "
                   "data/shapes_T_V_S for other --train-images/--val-images/--image-size)")
    p.add_argument("--train-images", type=int, default=DEFAULT_SHAPES["num_train"])
    p.add_argument("--val-images", type=int, default=DEFAULT_SHAPES["num_val"])
    p.add_argument("--image-size", type=int, default=DEFAULT_SHAPES["image_size"], help="generated images' side")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peer-size", type=int, default=None, help="peers' square input side (default: the longest "
                   "image side of the data, rounded up to 32)")
    p.add_argument("--peer-precision", choices=("fp32", "bf16-mixed"), default="fp32")
    p.add_argument("--ved-lr", type=float, default=1e-4)
    p.add_argument("--java", choices=("auto", "on", "off"), default="auto", help="Java for the caption scorer")
    p.add_argument("--quick", action="store_true", help="smoke test: 16 train / 8 val images of 80 px, 0.5 min")
    p.add_argument("--json-out", type=Path, default=Path("benchmarks/results/learning.json"))
    p.add_argument("--plot", type=Path, default=Path("benchmarks/results/learning.png"))
    p.add_argument("--work-dir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = p.parse_args(argv)
    if args.quick:
        args.train_images, args.val_images, args.image_size = 16, 8, 80
        args.minutes = min(args.minutes, 0.5)
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not args.tasks or any(t not in TASKS for t in args.tasks):
        p.error(f"--tasks: choose from {', '.join(TASKS)}")
    if args.minutes <= 0 or (args.eval_every is not None and args.eval_every <= 0):
        p.error("--minutes and --eval-every must be > 0")
    args.eval_every = args.eval_every or default_eval_every(args.minutes)
    return args


def prepare_data(args: argparse.Namespace) -> DataSpec:
    """The race's data: generated unless its root holds the annotation files already."""
    shapes = {"num_train": args.train_images, "num_val": args.val_images, "image_size": args.image_size, "seed": 0}
    root = args.data_root
    if root is None:
        root = DEFAULT_ROOT if shapes == DEFAULT_SHAPES else Path(
            f"data/shapes_{args.train_images}_{args.val_images}_{args.image_size}")
    ensure_shapes(root, **shapes)
    return DataSpec(Path(root), shapes)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    require("transformers", "learning race")
    data = prepare_data(args)
    size = args.peer_size or peers.letterbox_size(data.root)
    results: dict[str, Any] = {"benchmark": "learning race", "machine": machine_facts(args.threads), "settings": {
        "minutes": args.minutes, "eval_every": args.eval_every, "tasks": args.tasks, "threads": args.threads,
        "seed": args.seed, "data_root": str(data.root), "shapes": data.shapes, "peer_input_size": size,
        "peer_precision": args.peer_precision, "det_config": args.det_config, "cap_config": args.cap_config,
        "java": args.java}}
    scorer = CaptionScorer(_java(args.java)) if "captions" in args.tasks else None
    try:
        with tempfile.TemporaryDirectory(prefix="learning_race_") as tmp:
            work = args.work_dir or Path(tmp)
            for task in args.tasks:
                results[task] = race(task, args, data, size, work, scorer)
    finally:
        if scorer is not None:
            scorer.close()
    if scorer is not None:
        results["settings"]["caption_tokenizer"] = "java PTB" if scorer.java else "python PTB approximation"
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    print(f"wrote {args.json_out}")
    if args.plot:
        print(f"wrote {plot(results, args.plot)}")
    return results


if __name__ == "__main__":
    main()
