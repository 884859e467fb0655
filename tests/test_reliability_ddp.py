"""Reliability (issue 7, item 6): DDP validation gathers every image exactly once.

Lightning's ``DistributedSampler`` (``shuffle=False, drop_last=False``) pads the last round by repeating images, so
with 7 validation images on 2 ranks image 0 is predicted twice. Here the real sampler shards 7 images over 2 and 3
gloo processes; the padded copies carry different scores and captions, so a copy that slipped through the gather would
change the numbers. Detection (``gather_results`` / ``gather_image_ids`` -> COCOeval) must give the single-process
stats; captioning (``CaptionModule._gather_entries``) must hold each image once, with its first rank's caption. The
full path (``tools/eval.py --trainer.devices 2 --trainer.strategy ddp`` on 7 images) is
``tests/test_train_cli.py::test_ddp_validation_matches_single_process``.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from test_coco_eval import make_gt, make_results
from torch.utils.data import DistributedSampler

from vitkit.eval import evaluate_coco, gather_image_ids, gather_results
from vitkit.train.caption_module import CaptionModule

NUM_IMAGES = 7


def _worker(rank: int, world: int, init_file: str, gt_path: str, results: list, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        gt = json.loads(Path(gt_path).read_text())
        image_ids = [im["id"] for im in gt["images"]]
        def shard(r: int) -> list[int]:
            sampler = DistributedSampler(image_ids, num_replicas=world, rank=r, shuffle=False, drop_last=False)
            return [image_ids[i] for i in sampler]

        mine = shard(rank)  # what this rank's validation loader yields, padding included
        earlier = {i for r in range(rank) for i in shard(r)}  # images a lower rank also predicts
        dets, entries = [], []
        for image_id in mine:
            bump = 0.5 if image_id in earlier else 0.0  # a padded copy scores differently: double counting would show
            dets += [dict(r, score=min(1.0, r["score"] + bump)) for r in results if r["image_id"] == image_id]
            entries.append((image_id, f"image {image_id} by rank {rank}", [f"reference {image_id}"]))
        gathered = gather_results(dets, image_ids=mine)
        all_ids = gather_image_ids(mine)
        stats = evaluate_coco(gt_path, gathered, image_ids=all_ids).stats
        captions = CaptionModule._gather_entries(SimpleNamespace(_val_entries=entries))
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(
            {"mine": mine, "ids": all_ids, "stats": stats, "num_dets": len(gathered), "captions": captions}))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_ddp_gather_every_image_once_with_uneven_split(world: int, tmp_path):
    gt = make_gt(num_images=NUM_IMAGES, seed=3)
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    results = make_results(gt, seed=4)
    # fork starts the workers at once; they only gather and run COCOeval (no OpenMP compute, no CUDA)
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_worker, args=(world, str(tmp_path / "init"), str(gt_path), results, str(tmp_path)),
                       nprocs=world, join=True, start_method=method)
    out = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]

    ids = [im["id"] for im in gt["images"]]
    assert sum(len(o["mine"]) for o in out) > NUM_IMAGES  # the sampler did pad: some image was predicted twice
    single = evaluate_coco(gt_path, results, image_ids=ids)
    for o in out:
        assert o["ids"] == sorted(ids)  # none dropped
        assert o["num_dets"] == len(results)  # none duplicated
        assert o["stats"] == single.stats  # the single-process COCO numbers, on every rank
        assert [c[0] for c in o["captions"]] == sorted(ids)  # captioning: each image once...
        first_rank = {i: min(r for r in range(world) if i in out[r]["mine"]) for i in ids}
        assert all(c[1] == f"image {c[0]} by rank {first_rank[c[0]]}" for c in o["captions"])  # ...its first copy
