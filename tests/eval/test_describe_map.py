"""The describe mAP (DenseCap's dense-captioning mAP): hand-computed cases with an injected METEOR, the real Java
METEOR, the no-Java fallback.

How to read the expected APs: AP is the mean, over the reference's 100 recall points t (0, 0.01, ..., 0.99 added
up in float64), of the highest precision at recall >= t. A recall of exactly 0.5 reaches the first 50 points (the
51st is 0.5000000000000002), a recall of 1 all 100. So with precision p at recall 1 (and nothing better earlier)
AP = p; with precision p reached only at recall 0.5 AP = 0.5 p.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from vitkit.eval import caption_metrics as cm
from vitkit.eval import describe_map as dc
from vitkit.eval.describe_map import (
    FALLBACK_BACKEND,
    IOU_THRESHOLDS,
    METEOR_THRESHOLDS,
    RegionGroundTruth,
    RegionPredictions,
    evaluate_describe,
    java_meteor,
    meteor_fallback,
)
from vitkit.eval.ptb_tokenize import java_available

needs_java = pytest.mark.skipif(not java_available(), reason="needs a Java runtime (METEOR)")


class FakeMeteor:
    """Deterministic METEOR stand-in: ``table[candidate]`` if listed, else 1 for an exact reference, else 0."""

    __name__ = "fake"

    def __init__(self, table: dict[str, float] | None = None) -> None:
        self.table = table or {}
        self.calls: list[list[tuple[str, list[str]]]] = []

    def __call__(self, candidates: list[str], references: list[list[str]]) -> list[float]:
        self.calls.append(list(zip(candidates, references, strict=True)))
        return [self.table.get(c, 1.0 if c in refs else 0.0) for c, refs in zip(candidates, references, strict=True)]


def gt(boxes, captions, iscrowd=None):
    return RegionGroundTruth(np.array(boxes, float).reshape(-1, 4), captions, iscrowd)


def pred(boxes, scores, captions):
    return RegionPredictions(np.array(boxes, float).reshape(-1, 4), scores, captions)


def expect_aps(result, per_iou):
    """Check all 30 APs against ``per_iou``: IoU threshold -> (AP for METEOR thresholds 0..0.25), and the mAP."""
    for u in IOU_THRESHOLDS:
        for m, want in zip(METEOR_THRESHOLDS, per_iou[u], strict=True):
            assert result["ap"][f"iou{u:g}_meteor{m:g}"] == pytest.approx(want), (u, m)
    assert result["map"] == pytest.approx(np.mean([v for u in IOU_THRESHOLDS for v in per_iou[u]]))


CAR = [0, 0, 10, 10]  # xywh pixels


def test_image_without_regions_gives_false_positives_that_rank():
    # Image 1: one region, one exact prediction (score 0.9). Image 2: no region, one prediction (score 0.95).
    # Ranked: image 2's (FP: precision 0, recall 0), then image 1's (TP: precision 1/2, recall 1) -> AP = 0.5 at
    # every threshold. Ranked below instead (score 0.5), the TP comes first: precision 1 at recall 1 -> AP = 1.
    truth = {1: gt([CAR], ["a red car"]), 2: gt(np.zeros((0, 4)), [])}
    high = {1: pred([CAR], [0.9], ["a red car"]), 2: pred([[50, 50, 20, 20]], [0.95], ["a dog"])}
    result = evaluate_describe(truth, high, meteor=FakeMeteor())
    expect_aps(result, {u: [0.5] * 6 for u in IOU_THRESHOLDS})
    assert result["det_ap"] == {f"iou{u:g}": pytest.approx(0.5) for u in IOU_THRESHOLDS}
    assert (result["num_images"], result["num_regions"], result["num_predictions"]) == (2, 1, 2)
    assert result["meteor_backend"] == "custom:fake"
    low = {1: high[1], 2: pred([[50, 50, 20, 20]], [0.5], ["a dog"])}
    assert evaluate_describe(truth, low, meteor=FakeMeteor())["map"] == pytest.approx(1.0)


def test_no_region_at_all_is_undefined():
    truth = {1: gt(np.zeros((0, 4)), [])}
    with pytest.warns(UserWarning, match="no \\(non-crowd\\) region"):
        result = evaluate_describe(truth, {1: pred([CAR], [0.9], ["a car"])}, meteor=FakeMeteor())
    assert math.isnan(result["map"]) and math.isnan(result["det_map"])


def test_prediction_inside_a_crowd_region_is_ignored():
    # Regions: a car (normal) and a crowd box C = [100, 0, 100, 100] (not counted: 1 region to find).
    # P0 (0.95) lies wholly inside C: crowd overlap 1 -> ignored at every IoU threshold.
    # P1 (0.90) [150, 0, 100, 100] covers C by 50*100 / 100*100 = 0.5 of its own area -> ignored at u <= 0.5,
    #           a false positive at u = 0.6, 0.7.
    # P2 (0.80) on the car with its caption -> TP.
    # u <= 0.5: P2 alone, precision 1 at recall 1 -> AP 1; u >= 0.6: P1 FP, P2 TP -> precision 1/2 -> AP 0.5.
    truth = {7: gt([CAR, [100, 0, 100, 100]], ["a red car", "a crowd of people"], iscrowd=[0, 1])}
    preds = {7: pred([[110, 10, 20, 20], [150, 0, 100, 100], CAR], [0.95, 0.9, 0.8],
                     ["people", "a crowd", "a red car"])}
    fake = FakeMeteor()
    result = evaluate_describe(truth, preds, meteor=fake)
    expect_aps(result, {0.3: [1.0] * 6, 0.4: [1.0] * 6, 0.5: [1.0] * 6, 0.6: [0.5] * 6, 0.7: [0.5] * 6})
    assert result["det_map"] == pytest.approx((3 * 1.0 + 2 * 0.5) / 5)
    assert result["num_regions"] == 1
    assert fake.calls == [[("a red car", ["a red car"])]]  # only the one possible true positive is scored


def test_box_matches_but_caption_is_wrong():
    # Regions G1 (car) and G2 [20, 0, 10, 10] (tree): 2 to find.
    # P1 (0.9) on G1 exactly, caption scored 0.12. P2 (0.8) [20, 0, 10, 5] on G2: IoU 50/100 = 0.5, caption exact (1).
    # u <= 0.5, m in {0, .05, .1}: both TP -> AP 1.
    # u <= 0.5, m in {.15, .2, .25}: P1 FP, P2 TP at recall 0.5 with precision 1/2 -> AP 0.5 * 0.5 = 0.25.
    # u >= 0.6 (P2 always FP), m <= .1: P1 TP, precision 1 at recall 0.5 -> AP 0.5; m >= .15: no TP -> AP 0.
    truth = {3: gt([CAR, [20, 0, 10, 10]], ["a red car", "a tall tree"])}
    preds = {3: pred([CAR, [20, 0, 10, 5]], [0.9, 0.8], ["a blue car", "a tall tree"])}
    fake = FakeMeteor({"a blue car": 0.12})
    result = evaluate_describe(truth, preds, meteor=fake)
    good, bad = [1.0] * 3 + [0.25] * 3, [0.5] * 3 + [0.0] * 3
    expect_aps(result, {0.3: good, 0.4: good, 0.5: good, 0.6: bad, 0.7: bad})
    assert result["map"] == pytest.approx((3 * 3.75 + 2 * 1.5) / 30)  # 0.475
    assert result["det_ap"]["iou0.5"] == pytest.approx(1.0) and result["det_ap"]["iou0.6"] == pytest.approx(0.5)
    assert len(fake.calls) == 1 and len(fake.calls[0]) == 2  # one call for all pairs


def test_duplicate_on_one_region_is_a_false_positive_even_with_the_better_caption():
    # One region. P1 (0.9) takes it with a caption scored 0.12; P2 (0.8), same box, right caption, is a duplicate.
    # m <= 0.1: P1 TP (precision 1, recall 1), P2 FP -> AP 1.  m >= 0.15: both FP -> AP 0.  mAP 0.5, det AP 1.
    truth = {1: gt([CAR], ["a red car"])}
    preds = {1: pred([CAR, CAR], [0.8, 0.9], ["a red car", "a blue car"])}  # given out of score order
    fake = FakeMeteor({"a blue car": 0.12})
    result = evaluate_describe(truth, preds, meteor=fake)
    expect_aps(result, {u: [1.0] * 3 + [0.0] * 3 for u in IOU_THRESHOLDS})
    assert result["det_map"] == pytest.approx(1.0)
    assert fake.calls == [[("a blue car", ["a red car"])]]  # the duplicate is never scored


def test_a_region_is_taken_whatever_the_iou_threshold():
    # The reference's rule: P1 (0.9, IoU 40/100 = 0.4) takes the region before P2 (0.8, IoU 1), at every threshold.
    # u <= 0.4: P1 TP, P2 FP -> AP 1.  u >= 0.5: P1 below u, P2 a duplicate: both FP -> AP 0.
    truth = {1: gt([CAR], ["a red car"])}
    preds = {1: pred([[0, 0, 10, 4], CAR], [0.9, 0.8], ["a red car", "a red car"])}
    result = evaluate_describe(truth, preds, meteor=FakeMeteor())
    assert result["det_ap"] == {"iou0.3": 1.0, "iou0.4": 1.0, "iou0.5": 0.0, "iou0.6": 0.0, "iou0.7": 0.0}
    assert result["map"] == pytest.approx(0.4)


def test_overlapping_regions_merge_with_all_their_captions():
    # [0,0,10,10] and [0,0,10,9] overlap by IoU 0.9 >= 0.7: one region, references "a red car" and "red vehicle".
    # The prediction's caption matches the second -> TP everywhere, AP 1. Without merging: 2 regions; the prediction
    # takes the first (IoU 1 > 0.9), whose only reference differs -> caption APs 0, det AP 0.5 (recall 0.5).
    truth = {1: gt([CAR, [0, 0, 10, 9]], ["a red car", "red vehicle"])}
    preds = {1: pred([CAR], [0.9], ["red vehicle"])}
    fake = FakeMeteor()
    merged = evaluate_describe(truth, preds, meteor=fake)
    assert merged["map"] == pytest.approx(1.0) and merged["num_regions"] == 1
    assert fake.calls == [[("red vehicle", ["a red car", "red vehicle"])]]
    apart = evaluate_describe(truth, preds, meteor=FakeMeteor(), merge_iou=None)
    assert apart["map"] == 0.0 and apart["det_map"] == pytest.approx(0.5) and apart["num_regions"] == 2


def test_merging_is_greedy_not_transitive():
    # x = 0, 1, 2, 3 (10x10 boxes): neighbours overlap by 9/11 >= 0.7, two apart by 8/12 < 0.7. Boxes 1 and 2 have
    # three partners each; the first (1) takes {0, 1, 2}, box 3 stays alone: 2 regions.
    truth = {1: gt([[x, 0, 10, 10] for x in range(4)], ["a", "b", "c", "d"])}
    assert evaluate_describe(truth, {}, meteor=FakeMeteor())["num_regions"] == 2


def test_tensors_and_xyxy_give_the_same_result():
    truth = {1: gt([CAR, [20, 0, 10, 10]], ["a red car", "a tall tree"])}
    preds = {1: pred([CAR, [20, 0, 10, 5]], [0.9, 0.8], ["a blue car", "a tall tree"])}
    expected = evaluate_describe(truth, preds, meteor=FakeMeteor({"a blue car": 0.12}))
    xyxy = torch.tensor([[0.0, 0, 10, 10], [20, 0, 30, 5]])
    truth_xyxy = {1: RegionGroundTruth(torch.tensor([[0.0, 0, 10, 10], [20, 0, 30, 10]]), ["a red car", "a tall tree"])}
    preds_xyxy = {1: RegionPredictions(xyxy, torch.tensor([0.9, 0.8]), ["a blue car", "a tall tree"])}
    got = evaluate_describe(truth_xyxy, preds_xyxy, meteor=FakeMeteor({"a blue car": 0.12}), box_format="xyxy")
    assert got == expected


def test_bad_inputs_are_refused():
    truth = {1: gt([CAR], ["a red car"])}
    with pytest.raises(ValueError, match="missing from ground_truth"):
        evaluate_describe(truth, {2: pred([CAR], [0.9], ["x"])}, meteor=FakeMeteor())
    with pytest.raises(ValueError, match="captions for 1 boxes"):
        gt([CAR], ["a", "b"])
    with pytest.raises(ValueError, match="meteor must be"):
        evaluate_describe(truth, {1: pred([CAR], [0.9], ["x"])}, meteor="bleu")


def test_fallback_scorer_values():
    # 'a b c d' against 'a b x c d': m = 4, P = 1, R = 0.8, F = 10 P R / (R + 9 P) = 8 / 9.8; chunks 'a b' and
    # 'c d' -> penalty 0.5 (2/4)^3 = 1/16.  Identical 3 words: F = 1, one chunk -> 1 - 0.5 / 27.
    assert meteor_fallback("a b c d", ["q", "a b x c d"]) == pytest.approx(8 / 9.8 * (1 - 1 / 16))
    assert meteor_fallback("A red car.", ["a red car"]) == pytest.approx(1 - 0.5 / 27)
    assert meteor_fallback("a red car", ["green apples"]) == 0.0


def test_without_java_auto_warns_once_and_uses_the_fallback(monkeypatch):
    monkeypatch.setattr(dc, "java_available", lambda: False)
    monkeypatch.setattr(cm, "_NOTIFIED", set())
    truth = {1: gt([CAR, [20, 0, 10, 10]], ["a red car", "a tall tree"])}
    preds = {1: pred([CAR, [20, 0, 10, 10]], [0.9, 0.8], ["a red car", "green apples"])}
    with pytest.warns(UserWarning, match="Java was not found") as record:
        result = evaluate_describe(truth, preds)
    assert len([w for w in record if "Java was not found" in str(w.message)]) == 1
    assert result["meteor_backend"] == FALLBACK_BACKEND
    # fallback METEOR: exact caption 1 - 0.5/27 > 0.25, unrelated 0 -> at every threshold P1 TP, P2 FP -> AP 0.5
    assert result["map"] == pytest.approx(0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second evaluation stays quiet
        assert evaluate_describe(truth, preds, meteor="auto")["meteor_backend"] == FALLBACK_BACKEND
    with pytest.raises(RuntimeError, match="Java was not found"):
        evaluate_describe(truth, preds, meteor="java")


def test_with_java_auto_routes_all_pairs_to_java_meteor(monkeypatch):
    calls = []
    monkeypatch.setattr(dc, "java_available", lambda: True)
    monkeypatch.setattr(dc, "java_meteor", lambda c, r: calls.append((c, r)) or [1.0] * len(c))
    truth = {1: gt([CAR], ["a red car"]), 2: gt([CAR], ["a tall tree"])}
    preds = {1: pred([CAR], [0.9], ["a red car"]), 2: pred([CAR], [0.8], ["a tree"])}
    result = evaluate_describe(truth, preds)
    assert result["meteor_backend"] == "java" and result["map"] == pytest.approx(1.0)
    assert calls == [(["a red car", "a tree"], [["a red car"], ["a tall tree"]])]


@pytest.mark.slow  # starts the METEOR Java process (several seconds)
@needs_java
def test_real_java_meteor_ranks_identical_above_paraphrase_above_unrelated():
    scores = java_meteor(["A man riding a horse.", "a person on a horse", "green apples on wooden table"],
                         [["a man riding a horse"], ["a man riding a horse"], ["a red double decker bus"]])
    identical, paraphrase, unrelated = scores
    assert identical == pytest.approx(1.0, abs=1e-6)  # case and punctuation are normalised away
    assert identical > paraphrase > unrelated == 0.0
