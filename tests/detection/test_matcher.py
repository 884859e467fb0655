"""HungarianMatcher against an exhaustive search over all assignments, with a cost written out by hand."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from tests.support.devices import on_devices
from vitkit.detection import HungarianMatcher

NUM_CLASSES = 3


def _random_boxes(n: int, gen: torch.Generator) -> torch.Tensor:
    cxcy = 0.2 + 0.6 * torch.rand(n, 2, generator=gen)
    wh = 0.05 + 0.35 * torch.rand(n, 2, generator=gen)
    return torch.cat([cxcy, wh], dim=1)  # (n, 4) cxcywh


def _make_batch(sizes: list[int], num_queries: int, sigmoid: bool, seed: int):
    gen = torch.Generator().manual_seed(seed)
    width = NUM_CLASSES if sigmoid else NUM_CLASSES + 1
    outputs = {
        "pred_logits": 2 * torch.randn(len(sizes), num_queries, width, generator=gen),
        "pred_boxes": torch.stack([_random_boxes(num_queries, gen) for _ in sizes]),
    }
    targets = [
        {"boxes": _random_boxes(n, gen), "labels": torch.randint(0, NUM_CLASSES, (n,), generator=gen)} for n in sizes
    ]
    return outputs, targets


def _giou(a: list[float], b: list[float]) -> float:
    """GIoU of two cxcywh boxes, by hand."""
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = a[2] * a[3] + b[2] * b[3] - inter
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter / union - (hull - union) / hull


def _pair_cost(logits: list[float], box: list[float], label: int, gt: list[float], sigmoid: bool) -> float:
    if sigmoid:
        p = 1 / (1 + math.exp(-logits[label]))
        cls = 0.25 * (1 - p) ** 2 * -math.log(p) - 0.75 * p**2 * -math.log(1 - p)
    else:
        exps = [math.exp(x) for x in logits]
        cls = -exps[label] / sum(exps)
    l1 = sum(abs(x - y) for x, y in zip(box, gt, strict=True))
    return cls + 5 * l1 - 2 * _giou(box, gt)


def _brute_force(outputs: dict, target: dict, b: int, sigmoid: bool) -> tuple[float, set]:
    """Minimum total cost over every injective target -> query assignment, and the argmin pairs."""
    logits, boxes = outputs["pred_logits"][b].tolist(), outputs["pred_boxes"][b].tolist()
    gts, labels = target["boxes"].tolist(), target["labels"].tolist()
    cost = [[_pair_cost(logits[q], boxes[q], labels[t], gts[t], sigmoid) for t in range(len(gts))]
            for q in range(len(boxes))]
    best = min(itertools.permutations(range(len(boxes)), len(gts)),
               key=lambda qs: sum(cost[q][t] for t, q in enumerate(qs)))
    return sum(cost[q][t] for t, q in enumerate(best)), {(q, t) for t, q in enumerate(best)}


@pytest.mark.parametrize("sigmoid", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_matches_brute_force(sigmoid: bool, seed: int) -> None:
    sizes = [seed % 5, 4 - seed % 5, (2 * seed + 1) % 5]  # n in 0..4, including images without targets
    outputs, targets = _make_batch(sizes, num_queries=5, sigmoid=sigmoid, seed=seed)
    indices = HungarianMatcher().bind(sigmoid)(outputs, targets)
    assert len(indices) == len(sizes)
    for b, ((src, tgt), target) in enumerate(zip(indices, targets, strict=True)):
        assert src.dtype == tgt.dtype == torch.int64
        _, best_pairs = _brute_force(outputs, target, b, sigmoid)
        assert set(zip(src.tolist(), tgt.tolist(), strict=True)) == best_pairs


def test_empty_targets() -> None:
    outputs, targets = _make_batch([0, 0], num_queries=5, sigmoid=False, seed=0)
    for src, tgt in HungarianMatcher()(outputs, targets):
        assert src.shape == tgt.shape == (0,) and src.dtype == torch.int64


def test_one_image_without_targets() -> None:
    outputs, targets = _make_batch([3, 0, 2], num_queries=5, sigmoid=False, seed=1)
    indices = HungarianMatcher()(outputs, targets)
    assert [len(s) for s, _ in indices] == [3, 0, 2]
    for src, tgt in indices:
        assert len(set(src.tolist())) == len(src) and sorted(tgt.tolist()) == list(range(len(tgt)))


@on_devices
@pytest.mark.parametrize("sigmoid", [False, True])
def test_bf16_inputs_match_fp32(sigmoid: bool, device: str) -> None:
    outputs, targets = _make_batch([4, 3], num_queries=5, sigmoid=sigmoid, seed=7)
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    bf16 = {k: v.to(device).bfloat16() for k, v in outputs.items()}
    fp32 = {k: v.float() for k, v in bf16.items()}  # the same values, exactly representable
    matcher = HungarianMatcher().bind(sigmoid)
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        got = matcher(bf16, targets)
    for (s1, t1), (s2, t2) in zip(got, matcher(fp32, targets), strict=True):
        assert torch.equal(s1, s2) and torch.equal(t1, t2)


@pytest.mark.parametrize("sigmoid", [False, True])
def test_nonfinite_and_degenerate_boxes(sigmoid: bool) -> None:
    outputs, targets = _make_batch([3], num_queries=5, sigmoid=sigmoid, seed=3)
    outputs["pred_boxes"][0, 0] = torch.tensor([0.5, 0.5, 0.0, 0.0])  # zero size
    outputs["pred_boxes"][0, 1] = torch.tensor([0.5, 0.5, -0.2, 0.1])  # negative width
    outputs["pred_boxes"][0, 2] = float("nan")
    outputs["pred_logits"][0, 3] = float("nan")
    outputs["pred_logits"][0, 4, 0] = float("inf")
    targets[0]["boxes"][0, 2:] = 0.0  # degenerate ground truth too
    (src, tgt), = HungarianMatcher().bind(sigmoid)(outputs, targets)
    assert len(src) == 3 and len(set(src.tolist())) == 3 and sorted(tgt.tolist()) == [0, 1, 2]


def test_one_to_many_repeats_each_target() -> None:
    outputs, targets = _make_batch([2, 3], num_queries=10, sigmoid=False, seed=5)
    matcher = HungarianMatcher()
    indices = matcher(outputs, targets, repeat=3)
    for (src, tgt), n in zip(indices, [2, 3], strict=True):
        assert len(src) == 3 * n and len(set(src.tolist())) == 3 * n  # distinct queries
        assert torch.bincount(tgt, minlength=n).tolist() == [3] * n  # every target exactly 3 times
    # Same optimum as matching an explicitly repeated target list.
    repeated = [{k: v.repeat(3, *([1] * (v.dim() - 1))) for k, v in t.items()} for t in targets]
    explicit = matcher(outputs, repeated)
    for b, ((s1, t1), (s2, t2)) in enumerate(zip(indices, explicit, strict=True)):
        cost1 = _brute_cost(outputs, targets[b], b, s1, t1)
        cost2 = _brute_cost(outputs, repeated[b], b, s2, t2)
        assert cost1 == pytest.approx(cost2, abs=1e-4)


def test_one_to_many_more_slots_than_queries() -> None:
    outputs, targets = _make_batch([3], num_queries=4, sigmoid=False, seed=6)
    (src, tgt), = HungarianMatcher()(outputs, targets, repeat=2)
    assert len(src) == 4 and len(set(src.tolist())) == 4 and set(tgt.tolist()) <= {0, 1, 2}


def _brute_cost(outputs: dict, target: dict, b: int, src: torch.Tensor, tgt: torch.Tensor) -> float:
    logits, boxes = outputs["pred_logits"][b].tolist(), outputs["pred_boxes"][b].tolist()
    return sum(
        _pair_cost(logits[q], boxes[q], int(target["labels"][t]), target["boxes"][t].tolist(), False)
        for q, t in zip(src.tolist(), tgt.tolist(), strict=True)
    )
