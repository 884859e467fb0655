"""COCO evaluation: both backends against a direct pycocotools COCOeval run, subsets, empty results, DDP gather."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tests.support.coco_gt import CATEGORY_IDS, make_gt, make_results
from vitkit.eval import (
    STAT_KEYS,
    evaluate_coco,
    format_summary,
    gather_image_ids,
    gather_results,
    load_gt,
    merge_rank_results,
    validate_results,
)


def perfect_results(gt: dict[str, Any], image_ids: set[int] | None = None) -> list[dict[str, Any]]:
    """Every non-crowd GT box as a detection with score 1."""
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 1.0}
        for a in gt["annotations"]
        if not a["iscrowd"] and (image_ids is None or a["image_id"] in image_ids)
    ]


def reference_eval(gt_path: Path, results: list[dict[str, Any]], image_ids: list[int] | None = None):
    """Plain pycocotools: loadRes, evaluate, accumulate, summarize. Returns (stats array, printed summary)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        if image_ids is not None:
            ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        ev.summarize()
    return ev.stats, out.getvalue().rstrip("\n")


@pytest.fixture(scope="module")
def gt_dict() -> dict[str, Any]:
    return make_gt()


@pytest.fixture(scope="module")
def gt_path(tmp_path_factory: pytest.TempPathFactory, gt_dict: dict[str, Any]) -> Path:
    path = tmp_path_factory.mktemp("coco") / "instances.json"
    path.write_text(json.dumps(gt_dict))
    return path


@pytest.fixture(scope="module")
def results(gt_dict: dict[str, Any]) -> list[dict[str, Any]]:
    return make_results(gt_dict)


def test_synthetic_set_covers_the_hard_cases(gt_dict, results):
    anns = gt_dict["annotations"]
    assert any(a["iscrowd"] for a in anns)
    assert any(a["area"] != a["bbox"][2] * a["bbox"][3] for a in anns)
    areas = [a["area"] for a in anns if not a["iscrowd"]]
    assert min(areas) < 32**2 and max(areas) > 96**2 and any(32**2 < a < 96**2 for a in areas)
    with_anns = {a["image_id"] for a in anns}
    with_dets = {r["image_id"] for r in results}
    all_ids = {im["id"] for im in gt_dict["images"]}
    assert all_ids - with_anns and all_ids - with_dets
    assert max(sum(r["image_id"] == i for r in results) for i in all_ids) > 100


# faster-coco-eval computes precision as tp / (tp + fp), pycocotools as tp / (tp + fp + np.spacing(1)): a stat
# can differ by a few 1e-16 (see test_faster_precision_quirk). pycocotools through vitkit must be bit-exact.
FASTER_TOL = 1e-15


def test_both_backends_match_pycocotools(gt_path, results):
    ref_stats, ref_summary = reference_eval(gt_path, results)
    before = copy.deepcopy(results)
    out = {b: evaluate_coco(gt_path, results, backend=b) for b in ("faster", "pycocotools")}
    assert results == before  # inputs are not mutated by loadRes
    for backend, res in out.items():
        assert list(res.stats) == list(STAT_KEYS)
        assert res.summary == ref_summary, backend
        assert res.num_images == 30 and res.num_detections == len(results)
    for i, key in enumerate(STAT_KEYS):
        assert out["pycocotools"].stats[key] == float(ref_stats[i]), key
        assert out["faster"].stats[key] == pytest.approx(float(ref_stats[i]), rel=0, abs=FASTER_TOL), key
    assert 0.05 < out["faster"].stats["AP"] < 0.95  # a non-trivial case
    per_class = out["pycocotools"].per_class_ap
    assert set(per_class) == set(CATEGORY_IDS)
    assert out["faster"].per_class_ap == pytest.approx(per_class, rel=0, abs=FASTER_TOL)
    # The mean of the per-class APs is the overall AP (every class has GT here).
    assert np.mean(list(per_class.values())) == pytest.approx(out["pycocotools"].stats["AP"], abs=1e-12)


def test_faster_precision_quirk(tmp_path):
    """One GT box; a true positive ranked above a false positive. True AP is 1. pycocotools gives
    1 / (1 + 2**-52) = 0.9999999999999998 (its np.spacing(1) in the precision denominator), faster-coco-eval
    1.0. If this starts failing because the two agree, tighten FASTER_TOL to 0."""
    gt = {
        "images": [{"id": 1, "width": 100, "height": 100}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "area": 2500, "iscrowd": 0}
        ],
        "categories": [{"id": 1, "name": "a"}],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [70, 70, 20, 20], "score": 0.5},
    ]
    ref_stats, _ = reference_eval(path, dets)
    py = evaluate_coco(path, dets, backend="pycocotools").stats
    fast = evaluate_coco(path, dets, backend="faster").stats
    assert py["AP"] == float(ref_stats[0]) == 1 / (1 + np.spacing(1)) < 1.0
    assert fast["AP"] == 1.0
    assert all(abs(fast[k] - py[k]) <= FASTER_TOL for k in STAT_KEYS)


def test_summary_format(gt_path, results):
    res = evaluate_coco(gt_path, results)
    lines = res.summary.split("\n")
    assert len(lines) == 12
    assert all(line.startswith(" Average Precision") for line in lines[:6])
    assert all(line.startswith(" Average Recall") for line in lines[6:])
    assert lines[0].startswith(" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = ")
    assert res.summary == format_summary(res.stats)


def test_results_file_and_loaded_gt(gt_path, results, tmp_path):
    res_path = tmp_path / "results.json"
    res_path.write_text(json.dumps(results))
    expected = evaluate_coco(gt_path, results).stats
    for backend in ("faster", "pycocotools"):
        gt = load_gt(gt_path, backend)
        assert evaluate_coco(gt, res_path, backend=backend).stats == expected
        assert evaluate_coco(gt, results, backend=backend).stats == expected  # a loaded GT can be reused
    with pytest.raises(TypeError, match="backend"):
        evaluate_coco(load_gt(gt_path, "pycocotools"), results, backend="faster")


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_perfect_results_give_ap_one(gt_path, gt_dict, backend):
    stats = evaluate_coco(gt_path, perfect_results(gt_dict), backend=backend).stats
    assert stats["AP"] == 1.0 and stats["AP50"] == 1.0 and stats["AR100"] == 1.0
    assert all(stats[k] == 1.0 for k in ("APs", "APm", "APl", "ARs", "ARm", "ARl"))


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_empty_results(gt_path, gt_dict, backend):
    res = evaluate_coco(gt_path, [], backend=backend)
    assert res.stats == dict.fromkeys(STAT_KEYS, 0.0)  # GT everywhere, nothing detected: 0, not -1
    assert len(res.summary.split("\n")) == 12 and res.num_detections == 0
    # Only images without annotations: nothing defines any metric, COCO reports -1.
    empty_images = sorted({im["id"] for im in gt_dict["images"]} - {a["image_id"] for a in gt_dict["annotations"]})
    res = evaluate_coco(gt_path, [], backend=backend, image_ids=empty_images)
    assert res.stats == dict.fromkeys(STAT_KEYS, -1.0)
    assert set(res.per_class_ap.values()) == {-1.0}


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_image_ids_restrict_evaluation(gt_path, gt_dict, results, backend):
    with_anns = sorted({a["image_id"] for a in gt_dict["annotations"]})
    perfect_ids = set(with_anns[:10])
    mixed = perfect_results(gt_dict, perfect_ids) + [r for r in results if r["image_id"] not in perfect_ids]
    full = evaluate_coco(gt_path, mixed, backend=backend)
    subset = evaluate_coco(gt_path, mixed, backend=backend, image_ids=perfect_ids)
    assert full.stats["AP"] < 1.0
    assert subset.stats["AP"] == 1.0 and subset.num_images == 10
    # Same as setting params.imgIds in a direct pycocotools run.
    others = sorted({im["id"] for im in gt_dict["images"]} - perfect_ids)
    ref_stats, _ = reference_eval(gt_path, mixed, image_ids=others)
    got = evaluate_coco(gt_path, mixed, backend=backend, image_ids=others).stats
    assert [got[k] for k in STAT_KEYS] == [float(v) for v in ref_stats]


def test_validate_results_accepts_numpy_and_copies():
    raw = [
        {"image_id": 100, "category_id": 3, "bbox": [1, 2.5, 3, 4], "score": 1, "extra": "x"},
        {
            "image_id": np.int64(100),
            "category_id": np.int32(7),
            "bbox": np.float32([1, 2, 3, 4]),
            "score": np.float64(0.5),
        },
    ]
    clean = validate_results(raw)
    assert clean[0] == {"image_id": 100, "category_id": 3, "bbox": [1.0, 2.5, 3.0, 4.0], "score": 1.0}
    assert clean[1] == {"image_id": 100, "category_id": 7, "bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.5}
    assert all(type(v) is float for v in clean[1]["bbox"]) and type(clean[1]["image_id"]) is int
    assert clean[0]["bbox"] is not raw[0]["bbox"]


def test_bad_inputs(gt_path, results, tmp_path):
    with pytest.raises(ValueError, match=r"results\[1\]: missing key 'score'"):
        validate_results([results[0], {"image_id": 100, "category_id": 3, "bbox": [0, 0, 1, 1]}])
    with pytest.raises(ValueError, match=r"results\[0\]: key 'bbox'"):
        validate_results([{"image_id": 100, "category_id": 3, "bbox": [0, 0, 1], "score": 0.5}])
    with pytest.raises(ValueError, match=r"results\[0\]: key 'image_id' must be an integer"):
        validate_results([{"image_id": True, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.5}])
    with pytest.raises(ValueError, match="list of dicts"):
        validate_results({"image_id": 1})
    with pytest.raises(ValueError, match=r"results\[0\]: key 'score'"):
        validate_results([{"image_id": 100, "category_id": 3, "bbox": [0, 0, 1, 1], "score": float("nan")}])
    with pytest.raises(ValueError, match=r"results\[0\]: image_id 99999"):
        evaluate_coco(gt_path, [{"image_id": 99999, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.5}])
    with pytest.raises(ValueError, match="not in the annotation file"):
        evaluate_coco(gt_path, results, image_ids=[99999])
    with pytest.raises(ValueError, match="empty"):
        evaluate_coco(gt_path, results, image_ids=[])
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        evaluate_coco(tmp_path / "missing.json", results)
    with pytest.raises(ValueError, match="backend"):
        evaluate_coco(gt_path, results, backend="nope")
    with pytest.raises(ValueError, match="iou_type"):
        evaluate_coco(gt_path, results, iou_type="segm")


def test_unknown_category_is_ignored_like_cocoeval(gt_path, results):
    extra = [dict(results[0], category_id=999, score=0.99)]
    assert evaluate_coco(gt_path, results + extra).stats == evaluate_coco(gt_path, results).stats


# ----------------------------------------------------------------------------------------------- gathering


def _shards(results: list[dict[str, Any]], image_ids: list[int], world: int) -> list[tuple[list, list]]:
    """DistributedSampler(shuffle=False, drop_last=False) sharding: pad by repeating the first images, then
    rank r takes every world-th image from r. Returns per rank (results, image ids)."""
    padded = image_ids + image_ids[: (-len(image_ids)) % world]
    shards = []
    for rank in range(world):
        ids = padded[rank::world]
        shards.append(([r for i in ids for r in results if r["image_id"] == i], ids))
    return shards


def test_merge_rank_results_dedupes_padded_images():
    r = [{"image_id": i, "category_id": 3, "bbox": [0, 0, 1, 1], "score": s} for i, s in [(1, 0.5), (1, 0.4), (2, 0.3)]]
    rank0, rank1 = r[:2], [r[2], *copy.deepcopy(r[:2])]  # rank 1 repeats image 1 (padding)
    merged = merge_rank_results([rank0, rank1])
    assert merged == r and merged[0] is r[0]
    # Rank 0 predicted nothing for image 3; rank 1's padded copy must not resurrect detections for it.
    rank1_extra = [*rank1, {"image_id": 3, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.9}]
    assert merge_rank_results([rank0, rank1_extra], [[1, 3], [2, 1, 3]]) == r
    assert merge_rank_results([rank0, rank1_extra]) == [*r, rank1_extra[-1]]


def test_gather_with_fake_all_gather(monkeypatch, results):
    image_ids = sorted({r["image_id"] for r in results})[:5]
    shards = _shards(results, image_ids, world=2)
    assert set(shards[0][1]) & set(shards[1][1])  # 5 images on 2 ranks: one image on both

    def fake_all_gather_object(out: list, obj: Any) -> None:
        assert obj == (shards[0][0], shards[0][1])  # this process plays rank 0
        out[:] = [obj, (copy.deepcopy(shards[1][0]), shards[1][1])]

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_gather_object", fake_all_gather_object)
    gathered = gather_results(shards[0][0], image_ids=shards[0][1])
    expected = [r for r in results if r["image_id"] in image_ids]
    key = lambda r: (r["image_id"], r["score"])  # noqa: E731
    assert sorted(gathered, key=key) == sorted(expected, key=key)


def test_gather_without_distributed_is_identity(results):
    assert not dist.is_initialized()
    assert gather_results(results) == results
    assert gather_image_ids([5, 3, 5]) == [3, 5]


def _ddp_worker(rank: int, world: int, init_file: str, gt_path: str, shards: list, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results, ids = shards[rank]
        gathered = gather_results(results, image_ids=ids)
        all_ids = gather_image_ids(ids)
        res = evaluate_coco(gt_path, gathered, image_ids=all_ids)
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"stats": res.stats, "ids": all_ids}))
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_gather_matches_single_process(gt_path, gt_dict, results, tmp_path):
    image_ids = [im["id"] for im in gt_dict["images"][:5]]  # 5 images on 2 ranks: rank 1 repeats image 0
    shards = _shards(results, image_ids, world=2)
    assert shards[1][1][-1] == image_ids[0]
    # fork starts the workers in ~0.1 s; spawn re-imports torch in each (~12 s on 2 cores). The workers only
    # pickle, talk gloo and run COCOeval, so nothing fork-unsafe (CUDA, OpenMP compute) happens in them.
    start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(
        _ddp_worker,
        args=(2, str(tmp_path / "init"), str(gt_path), shards, str(tmp_path)),
        nprocs=2,
        join=True,
        start_method=start_method,
    )
    single = evaluate_coco(gt_path, [r for r in results if r["image_id"] in image_ids], image_ids=image_ids)
    for rank in range(2):
        out = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert out["ids"] == sorted(image_ids)
        assert out["stats"] == single.stats


def test_evaluation_pauses_the_cyclic_gc_and_restores_it(tmp_path, monkeypatch):
    import gc

    import vitkit.eval.coco_eval as coco_eval_mod

    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps({
        "images": [{"id": 1, "width": 100, "height": 100, "file_name": "a.jpg"}],
        "categories": [{"id": 3, "name": "c"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 30, 30], "area": 900,
                         "iscrowd": 0}],
    }))
    seen = []
    real = coco_eval_mod.load_gt
    monkeypatch.setattr(coco_eval_mod, "load_gt", lambda *a, **k: seen.append(gc.isenabled()) or real(*a, **k))
    res = coco_eval_mod.evaluate_coco(gt_path, [{"image_id": 1, "category_id": 3, "bbox": [10, 10, 30, 30],
                                                  "score": 0.9}])
    assert seen == [False] and gc.isenabled()
    assert res.stats["AP"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        coco_eval_mod.evaluate_coco(gt_path, [{"image_id": 99, "category_id": 3, "bbox": [1, 1, 2, 2], "score": 1.0}])
    assert gc.isenabled()  # restored after an error too
