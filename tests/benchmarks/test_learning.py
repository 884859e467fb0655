"""The learning race (benchmarks/learning.py): its budget rules on a fake clock, and the whole race (both tasks, all
four sides) on tiny generated data with a few seconds of training per side (slow: about a minute on 2 cores)."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from benchmarks import learning
from benchmarks.learning_budget import BudgetRun, budget_warmup, default_eval_every, factor_of, install_factor

MINUTES, EVAL_EVERY = 0.1, 0.05
SIDES = {"detection": ("vitkit", "rtdetr"), "captions": ("vitkit", "ved")}


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_default_eval_every_is_a_fifth_of_the_budget_rounded_up():
    assert default_eval_every(15) == 3.0
    assert default_eval_every(12) == 2.5
    assert default_eval_every(3) == 1.0
    assert default_eval_every(0.5) == pytest.approx(0.1)
    assert default_eval_every(1.2) == pytest.approx(0.3)


def test_budget_run_pauses_for_evaluations_resizes_and_stops(monkeypatch):
    fake = FakeTime()
    monkeypatch.setattr("benchmarks.learning_budget.time.perf_counter", fake)

    def evaluate() -> dict[str, float]:
        fake.now += 100.0  # evaluations take long: none of it may reach the training clock
        return {"AP": 0.5}

    totals: list[int] = []
    run = BudgetRun(minutes=0.1, eval_every=0.05, evaluate=evaluate, resize=totals.append, steps_per_epoch=4)
    run.start()
    stopped, steps = False, 0
    while not stopped:
        fake.now += 1.0  # one training second per step
        steps += 1
        stopped = run.after_step()
    assert steps == 6  # 6 training seconds = 0.1 min
    assert [p["minutes"] for p in run.points] == [0.0, 0.05, 0.1]
    assert [p["steps"] for p in run.points] == [0, 3, 6]
    assert run.points[-1]["epoch"] == 1.5
    assert run.summary()["train_minutes"] == 0.1 and run.summary()["eval_seconds"] == 300.0
    assert totals and all(t >= 6 for t in totals)  # resized every 5% of the budget: steps done + remaining / rate


def test_install_factor_keeps_the_step_counter():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor_of(10**6, 0, 0.0))
    for _ in range(50):
        opt.step()
        sched.step()
    install_factor(sched, factor_of(100, 0, 0.0))  # halfway through a 100-step cosine
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * (1 + math.cos(math.pi * 51 / 100)))


def test_budget_warmup_keeps_the_recipes_share():
    assert budget_warmup(200, 1500, 480) == 64  # a recipe warming up 200 of 20 x 75 steps, compressed to 480
    assert budget_warmup(200, 1500, 3000) == 400  # a longer budget warms up longer
    assert budget_warmup(200, None, 480) == 200  # the recipe's length unknown: its warmup as it is
    assert budget_warmup(10, 10_000, 50) == 1


@pytest.fixture(scope="module")
def race(tmp_path_factory):
    out = tmp_path_factory.mktemp("learning_race")
    threads = torch.get_num_threads()
    try:
        results = learning.main([
            "--data-root", str(out / "data"), "--train-images", "16", "--val-images", "4", "--image-size", "80",
            "--minutes", str(MINUTES), "--eval-every", str(EVAL_EVERY), "--threads", "2", "--java", "off",
            "--work-dir", str(out / "work"), "--json-out", str(out / "learning.json"),
            "--plot", str(out / "learning.png")])
    finally:
        torch.set_num_threads(threads)
    return out, results


@pytest.mark.slow
def test_race_writes_the_curves_of_all_four_sides(race):
    out, results = race
    written = json.loads((out / "learning.json").read_text())
    assert written == json.loads(json.dumps(results))
    assert written["machine"]["threads"] == 2 and written["machine"]["torch"] == torch.__version__
    assert written["settings"]["minutes"] == MINUTES and written["settings"]["eval_every"] == EVAL_EVERY
    for task, sides in SIDES.items():
        assert set(written[task]) == set(sides)
        for side in sides:
            rec = written[task][side]
            assert rec["parameters"] > 0 and rec["steps"] >= 1 and rec["step_seconds"] > 0
            assert rec["threads_seen"] == 2
            if side == "vitkit":  # the last re-sized schedule warms up over the recipe's share of the budget's steps
                opt = rec["optimizer"]
                if rec["schedule_resizes"]:
                    recipe_steps = opt["recipe_epochs"] * rec["steps_per_epoch"]
                    total = rec["schedule_resizes"][-1]["total_steps"]
                    assert opt["budget_warmup_steps"] == budget_warmup(opt["warmup_steps"], recipe_steps, total)
                else:  # a machine so loaded that the first step spent the budget: never re-sized
                    assert rec["steps"] == 1 and opt["budget_warmup_steps"] is None
            points = rec["points"]
            assert len(points) >= 2 and points[0]["minutes"] == 0.0
            assert all(a["minutes"] < b["minutes"] and a["steps"] < b["steps"] for a, b in itertools.pairwise(points))
            for point in points:
                if task == "detection":
                    assert 0.0 <= point["AP"] <= 1.0 and 0.0 <= point["AP50"] <= 1.0
                else:
                    keys = ("CIDEr", "greedy_CIDEr") if side == "vitkit" else ("CIDEr",)
                    assert all(math.isfinite(point[k]) and point[k] >= 0.0 for k in keys)
                    assert 0.0 <= point["Bleu_4"] <= 1.0


@pytest.mark.slow
def test_race_training_clock_respects_the_budget(race):
    _, results = race
    budget_s = MINUTES * 60
    for task, sides in SIDES.items():
        for side in sides:
            rec = results[task][side]
            final_s = rec["points"][-1]["minutes"] * 60
            assert rec["train_minutes"] == rec["points"][-1]["minutes"]
            # training stops after the step that reaches the budget: it started before the budget ran out
            assert budget_s - 0.01 <= final_s <= budget_s + rec["last_step_seconds"] + 0.01, (task, side)
            assert rec["eval_seconds"] > 0


@pytest.mark.slow
def test_race_plots_both_panels(race):
    out, _ = race
    png = (out / "learning.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
