"""SCST under DDP: every rank builds the CIDEr-D statistics of the whole training split, and they agree.

2 gloo processes each read the training captions through their own ``CaptionDataModule`` (as every DDP rank does)
and build the reward with ``CaptionModule.build_reward``, which compares the ranks' digests; each rank then scores
its own shard of images. A rank that read different captions makes every rank raise instead of training on
different rewards.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vitkit.captioning.datamodule import CaptionDataModule
from vitkit.captioning.module import CaptionModule
from vitkit.data.shapes import make_shapes


def _worker(rank: int, world: int, init_file: str, root: str, out_dir: str, corrupt_rank: int | None) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        references = CaptionDataModule(root=root, num_workers=0).train_references()
        if rank == corrupt_rank:  # this rank read a different file
            first = min(references)
            references[first] = ["something else entirely"]
        result: dict = {}
        try:
            cider = CaptionModule.build_reward(references)
        except RuntimeError as err:
            result["error"] = str(err)
        else:
            ids = sorted(references)[rank::world]  # this rank's shard of images
            result = {"digest": cider.digest(), "documents": cider.log_documents,
                      "df": {" ".join(g): n for g, n in cider.document_frequency.items()},
                      "scores": cider.score([references[i][0] for i in ids], ids).tolist()}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def _run(tmp_path: Path, name: str, corrupt_rank: int | None) -> list[dict]:
    root = tmp_path / "data"
    if not root.exists():
        make_shapes(root, num_train=12, num_val=2, image_size=80)
    out = tmp_path / name
    out.mkdir()
    mp.start_processes(_worker, args=(2, str(tmp_path / f"init_{name}"), str(root), str(out), corrupt_rank),
                       nprocs=2, join=True, start_method="spawn")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_both_ranks_build_the_same_document_frequencies(tmp_path):
    r0, r1 = _run(tmp_path, "same", None)
    assert r0["digest"] == r1["digest"] and r0["df"] == r1["df"] and r0["documents"] == r1["documents"]
    assert len(r0["df"]) > 20 and max(r0["df"].values()) <= 12  # every training image counted once
    assert len(r0["scores"]) == len(r1["scores"]) == 6 and min(r0["scores"] + r1["scores"]) > 0


def test_ranks_with_different_captions_refuse_to_train(tmp_path):
    for result in _run(tmp_path, "differ", corrupt_rank=1):
        assert "different CIDEr-D document frequencies" in result["error"]
