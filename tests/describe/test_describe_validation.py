"""Describe validation metrics: the attribute match on hand cases, uncaptioned annotations ignored in the describe
mAP, and a short validation run of a tiny DescribeModule that logs the three metrics beside the detection AP."""

from __future__ import annotations

import json
import math
import warnings

import lightning as L
import numpy as np
import pytest
import torch

from vitkit.captioning import Captioner
from vitkit.core import TransformerDecoder, ViTEncoder
from vitkit.data import make_shapes
from vitkit.describe.datamodule import DescribeDataModule
from vitkit.describe.module import DescribeModule
from vitkit.describe.regions import RegionReferences
from vitkit.describe.validation import (
    attribute_accuracy,
    ground_truth_regions,
    match_detections,
    normalize_phrase,
    per_rank_cap,
    region_cider,
)
from vitkit.detection import DETR, HungarianMatcher, SetCriterion
from vitkit.eval import describe_map
from vitkit.eval.describe_map import RegionGroundTruth, RegionPredictions, evaluate_describe

pytestmark = pytest.mark.usefixtures("one_thread")


def _exact(candidates: list[str], references: list[list[str]]) -> list[float]:
    """A METEOR stand-in: 1 for a caption equal to a reference, else 0."""
    return [float(c in refs) for c, refs in zip(candidates, references, strict=True)]


# ------------------------------------------------------------------------------------------- attribute match
def test_matching_is_greedy_by_score_one_to_one_and_per_class():
    gt = [[0, 0, 10, 10], [20, 0, 30, 10], [0, 20, 10, 30]]
    gt_labels = [1, 1, 2]
    det = [[0, 0, 10, 9],     # 0: gt 0 (IoU 0.9), but scored below det 1
           [0, 0, 10, 10],    # 1: gt 0 exactly, the highest score: takes it
           [21, 0, 30, 10],   # 2: gt 1 (IoU 0.9)
           [0, 20, 10, 30],   # 3: gt 2's box, but another class: no match
           [20, 0, 30, 4]]    # 4: gt 1 at IoU 0.4 < 0.5
    scores = [0.8, 0.9, 0.7, 0.95, 0.6]
    labels = [1, 1, 1, 1, 1]
    assert match_detections(det, scores, labels, gt, gt_labels) == [(1, 0), (2, 1)]
    assert match_detections(det, scores, labels, gt, gt_labels, iou_threshold=0.3) == [(1, 0), (2, 1)]
    assert match_detections([[20, 0, 30, 4]], [1.0], [1], gt, gt_labels, iou_threshold=0.4) == [(0, 1)]
    assert match_detections(np.zeros((0, 4)), [], [], gt, gt_labels) == []
    assert match_detections(det, scores, labels, np.zeros((0, 4)), []) == []


def test_attribute_accuracy_compares_normalised_phrases_of_captioned_matches():
    assert normalize_phrase("  A small  RED\ttriangle ") == "a small red triangle"
    captions = ["a small red triangle", "a large blue star", "a small green circle", "a red square"]
    phrases = ["A small red  triangle", "a small blue star", None, "a large red square"]
    pairs = [(0, 0), (1, 1), (2, 2)]  # detection 3 matched nothing; ground truth 2 has no phrase: not judged
    assert attribute_accuracy(captions, phrases, pairs) == (1, 2)
    assert attribute_accuracy(captions, phrases, []) == (0, 0)


# ------------------------------------------------------------------------------------ uncaptioned annotations
def test_uncaptioned_annotations_are_ignored_in_the_describe_map_not_false_positives():
    """One captioned box found with its phrase, and a higher-scored detection of an annotation without a phrase:
    ignored (AP 1); had the annotation been dropped from the ground truth, that detection would be a false
    positive ranked first (AP 0.5 at every threshold)."""
    ref = RegionReferences(ann_ids=np.array([1, 2]), boxes=np.array([[0.0, 0, 10, 10], [50, 50, 20, 20]]),
                           category_ids=np.array([1, 1]), iscrowd=np.array([False, False]),
                           captions=["a red square", None])
    gt = ground_truth_regions(ref)
    assert gt.iscrowd.tolist() == [False, True]
    pred = RegionPredictions([[0, 0, 10, 10], [50, 50, 20, 20]], [0.5, 0.9], ["a red square", "a blue star"])
    result = evaluate_describe({7: gt}, {7: pred}, meteor=_exact, merge_iou=None)
    assert result["map"] == pytest.approx(1.0) and result["num_regions"] == 1
    dropped = RegionGroundTruth([[0, 0, 10, 10]], ["a red square"])
    assert evaluate_describe({7: dropped}, {7: pred}, meteor=_exact, merge_iou=None)["map"] == pytest.approx(0.5)


def test_region_cider_and_the_per_rank_image_cap():
    given = [((1, 1), "a red square", "a red square"), ((1, 2), "a blue star", "a small blue star"),
             ((2, 3), "a green circle", "a large yellow triangle")]
    assert region_cider(given) > region_cider([(k, "a green circle", p) for k, _, p in given]) >= 0.0
    assert math.isnan(region_cider([]))
    assert per_rank_cap(None, 4) == math.inf and per_rank_cap(10, 4) == 3 and per_rank_cap(10, 1) == 10


# ------------------------------------------------------------------------------------------ validation run
SMALL = {"batch_size": 2, "num_workers": 0, "train_scales": [64], "train_max_size": 96, "crop_p": 0.0,
         "val_size": 64, "val_max_size": 96}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory):
    """4 + 3 shapes images, half with a crowd region; every third annotation loses its caption."""
    paths = make_shapes(tmp_path_factory.mktemp("describe_val"), num_train=4, num_val=3, image_size=80, seed=1,
                        crowd_fraction=0.5)
    for split in ("train", "val"):
        path = paths[f"instances_{split}"]
        data = json.loads(path.read_text())
        for ann in data["annotations"][2::3]:
            ann.pop("caption", None)
        path.write_text(json.dumps(data))
    return paths["root"]


def _module(dm: DescribeDataModule, **kwargs) -> DescribeModule:
    torch.manual_seed(0)
    tok = dm.tokenizer
    enc = ViTEncoder(patch_size=16, embed_dim=32, depth=1, num_heads=2, pos_embed="rope", class_token=False)
    det = DETR(enc, TransformerDecoder(dim=32, depth=1, num_heads=2), num_classes=dm.num_classes, num_queries=8,
               sigmoid_head=True)
    text = Captioner(None, TransformerDecoder(dim=32, depth=1, num_heads=2, return_intermediate=False),
                     vocab_size=tok.vocab_size, pad_id=tok.pad_id, bos_id=tok.bos_id, eos_id=tok.eos_id, max_length=8)
    return DescribeModule(det, text, SetCriterion(HungarianMatcher()), roi_size=2, label_to_cat_id=dm.label_to_cat_id,
                          class_names=dm.class_names, eval_backend="pycocotools", **kwargs)


def test_validation_logs_detection_ap_and_the_three_describe_metrics(root, monkeypatch):
    """An untrained tiny model on 3 val images (crowd regions, uncaptioned annotations): val/AP as before, plus
    val/describe_mAP, val/region_CIDEr and val/region_attr_acc; METEOR runs once per validation (a stand-in counts the
    calls), every val image is described, and the module records no network as a hyper-parameter."""
    calls = []

    def fake_java(candidates, references):
        calls.append(len(candidates))
        return [0.5] * len(candidates)

    monkeypatch.setattr(describe_map, "java_available", lambda: True)
    monkeypatch.setattr(describe_map, "java_meteor", fake_java)
    dm = DescribeDataModule(root=str(root), **SMALL)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*is an instance of `nn.Module`.*")
        module = _module(dm, describe_eval_threshold=0.0, describe_eval_max_detections=5)
    assert {"text", "detector", "criterion"}.isdisjoint(module.hparams)
    assert module.hparams.describe_eval_max_detections == 5
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    for _ in range(2):
        metrics = trainer.validate(module, datamodule=dm, verbose=False)[0]
    assert calls and len(calls) == 2  # one METEOR call per validation
    assert "val/AP" in metrics
    for key in ("val/describe_mAP", "val/region_attr_acc"):
        assert 0.0 <= metrics[key] <= 1.0, (key, metrics[key])
    assert metrics["val/region_CIDEr"] >= 0.0
    result = module.last_describe["describe_map"]
    assert result["num_images"] == 3 and result["num_predictions"] == 15
    assert result["meteor_backend"] == "java"
    refs = dm.val_references()
    captioned = sum(c is not None for r in refs.values() for c, crowd in zip(r.captions, r.iscrowd, strict=True)
                    if not crowd)
    assert result["num_regions"] <= captioned  # uncaptioned annotations are no regions to find


def test_describe_eval_max_images_bounds_the_described_images(root, monkeypatch):
    monkeypatch.setattr(describe_map, "java_available", lambda: False)  # the fallback scorer: no Java start
    dm = DescribeDataModule(root=str(root), **SMALL)
    module = _module(dm, describe_eval_max_images=1)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback's one-line notice, Lightning's loader hints
        trainer.validate(module, datamodule=dm, verbose=False)
    assert module.last_describe["describe_map"]["num_images"] == 1
    assert module.last_eval is not None  # the detection AP still covers the split
