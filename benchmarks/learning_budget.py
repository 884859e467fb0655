"""The learning race's clock and budget rules, shared by every side (see :mod:`benchmarks.learning`).

- :class:`TrainClock` counts training wall-clock time only; it is paused while a side is evaluated.
- :class:`BudgetRun` drives one side through its budget: after every optimizer step it decides whether to re-size
  the lr schedule, to evaluate (a reported point) or to stop. Vitkit's Lightning runs call it from
  :class:`BudgetCallback`; the peers' plain loops call it directly.
- :func:`budget_warmup` keeps a recipe's warmup share when its schedule is compressed into the budget.
- :func:`install_factor` puts a new per-step lr factor into a running ``LambdaLR`` (its step counter kept), which is
  how a schedule is re-sized to the step count the budget allows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch

from vitkit.training.optim import warmup_schedule

CALIBRATION_STEPS = 20  # the schedule is first sized after this many optimizer steps ...
RESIZE_FRACTION = 0.05  # ... and again every 5% of the budget


def default_eval_every(minutes: float) -> float:
    """Minutes between evaluations: a fifth of the budget, rounded up to 0.5 min (to 0.1 min below 2.5 min)."""
    step = 0.5 if minutes >= 2.5 else 0.1
    return max(step, math.ceil(round(minutes / 5 / step, 6)) * step)


class TrainClock:
    """Wall-clock seconds spent training, excluding paused stretches (evaluations)."""

    def __init__(self) -> None:
        self._total = 0.0
        self._since: float | None = None

    def start(self) -> None:
        if self._since is None:
            self._since = time.perf_counter()

    def pause(self) -> None:
        if self._since is not None:
            self._total += time.perf_counter() - self._since
            self._since = None

    @property
    def seconds(self) -> float:
        running = time.perf_counter() - self._since if self._since is not None else 0.0
        return self._total + running


def factor_of(total_steps: int, warmup_steps: int, min_lr_ratio: float, **options: Any) -> Callable[[int], float]:
    """The per-step lr factor of :func:`vitkit.training.optim.warmup_schedule` for ``total_steps`` (built on a throwaway
    optimizer, so the real one is not touched)."""
    dummy = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return warmup_schedule(dummy, total_steps, warmup_steps, min_lr_ratio, **options).lr_lambdas[0]


def budget_warmup(warmup_steps: int, recipe_steps: int | None, total_steps: int) -> int:
    """The warmup of a schedule re-sized to ``total_steps``: the recipe's share of its own steps (``warmup_steps`` of
    ``recipe_steps``), so that compressing a recipe into a budget keeps the shape of its schedule; the recipe's
    ``warmup_steps`` as they are where its length is unknown (``recipe_steps`` None)."""
    if not recipe_steps:
        return warmup_steps
    return max(1, round(warmup_steps * total_steps / recipe_steps))


def install_factor(scheduler: torch.optim.lr_scheduler.LambdaLR, factor: Callable[[int], float]) -> None:
    """Replace a running ``LambdaLR``'s factor for every parameter group and set the groups' current lr from it (the
    scheduler's step counter and base lrs are kept)."""
    groups = scheduler.optimizer.param_groups
    scheduler.lr_lambdas = [factor] * len(groups)
    for group, base in zip(groups, scheduler.base_lrs, strict=True):
        group["lr"] = base * factor(scheduler.last_epoch)


@dataclass
class BudgetRun:
    """One side's budget: training clock, evaluation points, schedule re-sizing, stop decision.

    Args:
        minutes: training budget (wall-clock minutes on the training clock).
        eval_every: minutes between evaluations; the last one is at the end of the budget.
        evaluate: returns the metrics of the model as it is now (run with the clock paused).
        resize: gets the estimated total number of optimizer steps of the budget and re-sizes the lr schedule.
        steps_per_epoch: optimizer steps per epoch (set before :meth:`start`), for the reported epochs.
    """

    minutes: float
    eval_every: float
    evaluate: Callable[[], dict[str, float]]
    resize: Callable[[int], None]
    steps_per_epoch: int = 1
    clock: TrainClock = field(default_factory=TrainClock)
    steps: int = 0
    points: list[dict[str, Any]] = field(default_factory=list)
    resizes: list[dict[str, Any]] = field(default_factory=list)
    eval_seconds: float = 0.0
    last_step_seconds: float = 0.0  # training-clock seconds of the latest step (at the end: the one past the budget)
    _last_step_end: float = 0.0
    _next_eval: float = 0.0
    _next_resize: float = 0.0

    @property
    def budget_s(self) -> float:
        return self.minutes * 60.0

    def start(self) -> None:
        """Evaluate the initialised model (the point at minute 0), then start the training clock (call just before
        the first batch is asked for)."""
        self._next_eval = min(self.eval_every, self.minutes) * 60.0
        self._next_resize = RESIZE_FRACTION * self.budget_s
        self._point()
        self.clock.start()

    def estimate_total(self) -> int:
        """Steps done + the remaining budget / the mean step time so far (data loading and epoch ends included)."""
        t = max(self.clock.seconds, 1e-9)
        return max(self.steps + 1, round(self.steps + max(0.0, self.budget_s - t) * self.steps / t))

    def after_step(self) -> bool:
        """Call after every optimizer step (and the schedule's step). Returns True when the budget is spent (the
        final point is then recorded and the clock stopped)."""
        self.steps += 1
        t = self.clock.seconds
        self.last_step_seconds, self._last_step_end = t - self._last_step_end, t
        if t >= self.budget_s:
            self._point()
            return True
        if self.steps == CALIBRATION_STEPS or t >= self._next_resize:
            total = self.estimate_total()
            self.resize(total)
            self.resizes.append({"steps": self.steps, "seconds": round(t, 3), "total_steps": total})
            while self._next_resize <= t:
                self._next_resize += RESIZE_FRACTION * self.budget_s
        if t >= self._next_eval:
            self._point()
            self.clock.start()
            while self._next_eval <= t:
                self._next_eval += self.eval_every * 60.0
        return False

    def _point(self) -> None:
        self.clock.pause()
        minutes = self.clock.seconds / 60.0
        t0 = time.perf_counter()
        metrics = self.evaluate()
        seconds = time.perf_counter() - t0
        self.eval_seconds += seconds
        self.points.append({"minutes": round(minutes, 4), "epoch": round(self.steps / self.steps_per_epoch, 3),
                            "steps": self.steps, **metrics, "eval_seconds": round(seconds, 2)})
        print(f"    {minutes:6.2f} min  epoch {self.steps / self.steps_per_epoch:6.2f}  step {self.steps:6d}  "
              + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()), flush=True)

    def summary(self) -> dict[str, Any]:
        """The side's training facts for the JSON record."""
        seconds = self.clock.seconds
        return {"train_minutes": round(seconds / 60.0, 4), "steps": self.steps,
                "epochs": round(self.steps / self.steps_per_epoch, 3), "steps_per_epoch": self.steps_per_epoch,
                "step_seconds": round(seconds / max(1, self.steps), 4),
                "last_step_seconds": round(self.last_step_seconds, 4), "eval_seconds": round(self.eval_seconds, 2),
                "schedule_resizes": self.resizes, "points": self.points}


def train_mode_restored(module: torch.nn.Module) -> Callable[[], None]:
    """Remember every submodule's train/eval mode; the returned function restores them."""
    modes = [(m, m.training) for m in module.modules()]

    def restore() -> None:
        for m, training in modes:
            m.train(training)

    return restore


class BudgetCallback(L.Callback):
    """Runs a Lightning fit on a :class:`BudgetRun`: starts the clock with training, re-sizes the module's step
    schedule (vitkit's :func:`~vitkit.training.optim.warmup_schedule` with the module's own hyper-parameters),
    evaluates at the reported minutes and stops the trainer when the budget is spent.

    Args:
        minutes, eval_every: the budget (see :class:`BudgetRun`).
        evaluate: ``evaluate(trainer, module) -> metrics``; called in eval mode under the trainer's validation
            precision context, without gradients.
        threads: torch intra-op threads, set again when training starts.
        recipe_epochs: the config's own ``trainer.max_epochs``: its warmup keeps the share of the recipe's steps
            (:func:`budget_warmup`); None keeps the config's ``warmup_steps``.
    """

    def __init__(self, minutes: float, eval_every: float,
                 evaluate: Callable[[L.Trainer, L.LightningModule], dict[str, float]], threads: int,
                 recipe_epochs: int | None = None) -> None:
        self.minutes, self.eval_every, self._evaluate, self.threads = minutes, eval_every, evaluate, threads
        self.recipe_epochs = recipe_epochs
        self.warmups: list[int] = []  # the warmup of every re-sized schedule
        self.run: BudgetRun | None = None
        self.threads_seen: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        torch.set_num_threads(self.threads)
        self.threads_seen = torch.get_num_threads()
        scheduler = trainer.lr_scheduler_configs[0].scheduler
        hp = pl_module.hparams
        options = {k: hp[k] for k in ("schedule", "lr_drop") if k in hp}  # as vitkit.training.module passes them
        steps_per_epoch = max(1, int(trainer.num_training_batches))
        recipe_steps = self.recipe_epochs * steps_per_epoch if self.recipe_epochs else None

        def resize(total: int) -> None:
            warmup = budget_warmup(hp.warmup_steps, recipe_steps, total)
            self.warmups.append(warmup)
            install_factor(scheduler, factor_of(total, warmup, hp.min_lr_ratio, **options))
            pl_module.total_steps = total  # what step shares (the caption module's scst_start, low_res_until) refer to

        def evaluate() -> dict[str, float]:
            restore = train_mode_restored(pl_module)
            pl_module.eval()
            try:
                with trainer.precision_plugin.val_step_context(), torch.no_grad():
                    return self._evaluate(trainer, pl_module)
            finally:
                restore()

        self.run = BudgetRun(self.minutes, self.eval_every, evaluate, resize, steps_per_epoch=steps_per_epoch)
        self.run.start()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.run is not None and not trainer.fit_loop._should_accumulate() and self.run.after_step():
            trainer.should_stop = True
