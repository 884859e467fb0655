"""Reliability (issue 7, item 6): DDP validation gathers every image exactly once.

Lightning's ``DistributedSampler`` (``shuffle=False, drop_last=False``) pads the last round by repeating images, so
with 7 validation images on 2 ranks image 0 is predicted twice. Here the real sampler shards 7 images over 2 and 3
gloo processes; the padded copies carry different scores and captions, so a copy that slipped through the gather would
change the numbers. Detection (``gather_results`` / ``gather_image_ids`` -> COCOeval) must give the single-process
stats; captioning (``CaptionModule._gather_entries``) must hold each image once, with its first rank's caption. The
full path (``tools/eval.py --trainer.devices 2 --trainer.strategy ddp`` on 7 images) is
``tests/cli/test_train_cli.py::test_ddp_validation_matches_single_process``.

DDP training with Lightning's default ``ddp`` strategy (``find_unused_parameters=False``) needs every trainable
parameter to get a gradient in every step: the shipped configs' models do after one training step, and 2
gloo processes train the shapes recipe's model with plain ``DistributedDataParallel`` to identical weights. A
checkpoint saved when deformable detectors still held an unused ``level_embed`` loads and resumes.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from torchvision.ops import box_convert

from tests.support.coco_gt import make_gt, make_results
from tests.support.configs import build_module
from tests.support.devices import on_devices
from vitkit.captioning.module import CaptionModule
from vitkit.detection.module import DetectionModule
from vitkit.eval import evaluate_coco, gather_image_ids, gather_results

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


# ----------------------------------------------------------------------------------------------- DDP training

def _batch(seed: int, size: int = 64) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """2 images (the second half padding on the right) with 1 and 2 boxes: enough for matching and denoising."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 3, size, size, generator=g)
    mask = torch.zeros(2, size, size, dtype=torch.bool)
    mask[1, :, size // 2:] = True
    boxes = [torch.tensor([[0.4, 0.5, 0.3, 0.4]]), torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.7, 0.3, 0.2]])]
    targets = [{"labels": torch.arange(len(b)) % 4, "boxes": b, "image_id": torch.tensor(i)}
               for i, b in enumerate(boxes)]
    return images, mask, targets


def _training_step(module: DetectionModule, detector: nn.Module, seed: int, device: str = "cpu") -> None:
    images, mask, targets = _batch(seed)
    images, mask = images.to(device), mask.to(device)
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    module.criterion(detector(images, mask, targets), targets)["loss"].backward()


@on_devices
@pytest.mark.parametrize("config", ["detr_shapes.yaml", "detr_coco.yaml", "detr_r50_coco.yaml"])
def test_every_trainable_parameter_gets_a_gradient(config, one_thread, device):
    """What ``strategy: ddp`` needs (DDP's reducer waits for a gradient of every parameter that requires one)."""
    module = build_module(config, DetectionModule, {"num_classes": 4}).train().to(device)
    _training_step(module, module.detector, seed=0, device=device)
    missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{config}: no gradient for {missing}"


@on_devices
@pytest.mark.parametrize("config", ["caption_shapes.yaml", "caption_coco.yaml"])
def test_every_trainable_caption_parameter_gets_a_gradient(config, one_thread, device):
    links = {"vocab_size": 50, "pad_id": 0, "bos_id": 1, "eos_id": 2, "max_length": 8}
    module = build_module(config, CaptionModule, links).train().to(device)
    images, mask, targets = (t.to(device) if isinstance(t, torch.Tensor) else t for t in _batch(seed=0))
    tokens = torch.tensor([[1, 5, 6, 7, 2, 0], [1, 8, 9, 2, 0, 0]], device=device)  # (B, T), padded with pad_id
    objects = [{"boxes": box_convert(t["boxes"], "cxcywh", "xyxy"), "labels": t["labels"]} for t in targets]
    module.log = lambda *args, **kwargs: None  # no trainer
    module.training_step((images, mask, tokens, [0, 1], objects), 0).backward()
    missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{config}: no gradient for {missing}"


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        module = build_module("detr_shapes.yaml", DetectionModule, {"num_classes": 4}).train()
        ddp = DistributedDataParallel(module.detector)  # what strategy "ddp" builds: find_unused_parameters=False
        opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
        for step in range(2):  # an unused parameter fails the second step's forward ("finished reduction")
            opt.zero_grad()
            _training_step(module, ddp, seed=10 * step + rank)  # each rank its own batch
            opt.step()
        torch.save({n: p.detach() for n, p in module.named_parameters()}, Path(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_training_with_default_strategy(tmp_path):
    """2 gloo processes, 2 steps of the shapes recipe's model under plain DDP: no error, identical weights."""
    mp.start_processes(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")  # spawn: the autograd and OpenMP threads of this process stay here
    w0, w1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert w0.keys() == w1.keys()
    for name in w0:
        torch.testing.assert_close(w0[name], w1[name], rtol=0, atol=0, msg=name)

