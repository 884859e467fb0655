"""Bad images inside training and validation sets (issue 7, item 2).

A corrupt, truncated or non-image file is reported by path, once, on the main process (also when DataLoader workers
read it) and skipped: replaced by the next readable image in training (batches and DDP step counts unchanged), left
out in validation (no duplicated predictions; COCO AP over the readable images). ``bad_images="fail"`` stops at the
first one. See vitkit/data/bad_images.py.
"""

from __future__ import annotations

import gc
import itertools
import json
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from vitkit.data.bad_images import BadImageWarning, SkippingDataLoader
from vitkit.data.collate import DropNone
from vitkit.data.images import ImageReadError
from vitkit.detection.datamodule import CocoDataModule

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _stop_workers() -> Iterator[None]:
    """Shut a test's persistent DataLoader workers down when it ends: Lightning's save_hyperparameters keeps frames
    (and so the loaders) in a reference cycle, and workers that outlive their test are inherited by the next test's
    workers, which then wait out the 5 s join timeout twice."""
    yield
    gc.collect()

CATEGORIES = [{"id": 3, "name": "box"}, {"id": 8, "name": "bar"}]
SMALL = {"train_scales": [32], "train_max_size": 64, "crop_p": 0.0, "val_size": 32, "val_max_size": 64}


def _write_split(root: Path, split: str, n: int, first_id: int) -> list[int]:
    """n images 40 x 32 with one box each, COCO instances + captions files; returns the image ids."""
    folder = root / f"{split}2017"
    folder.mkdir(parents=True)
    (root / "annotations").mkdir(exist_ok=True)
    images, anns, caps = [], [], []
    for k in range(n):
        image_id = first_id + k
        name = f"{image_id:04d}.png"
        img = Image.new("RGB", (40, 32), (20, 20, 20))
        img.paste((200, 40 + 20 * k, 40), (4 + k, 6, 24 + k, 26))
        img.save(folder / name)
        images.append({"id": image_id, "file_name": name, "width": 40, "height": 32})
        anns.append({"id": 100 + image_id, "image_id": image_id, "category_id": CATEGORIES[k % 2]["id"],
                     "bbox": [4 + k, 6, 20, 20], "area": 400, "iscrowd": 0})
        caps += [{"id": 1000 + 2 * image_id + j, "image_id": image_id, "caption": f"a {CATEGORIES[k % 2]['name']} "
                  f"number {k} {'left' if j else 'right'}"} for j in range(2)]
    (root / "annotations" / f"instances_{split}2017.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES}))
    (root / "annotations" / f"captions_{split}2017.json").write_text(json.dumps({"images": images,
                                                                                  "annotations": caps}))
    return [im["id"] for im in images]


def _root(tmp_path: Path, n_train: int = 8, n_val: int = 6) -> tuple[Path, list[int], list[int]]:
    root = tmp_path / "data"
    return root, _write_split(root, "train", n_train, 1), _write_split(root, "val", n_val, 101)


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _garbage(path: Path) -> Path:
    path.write_bytes(b"this is not an image at all")
    return path


def _bad_image_warnings(caught: Iterable[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, BadImageWarning)]


def _ids(batches: Iterable[Any]) -> list[list[int]]:
    return [[int(t["image_id"]) for t in batch[2]] for batch in batches]


def test_corrupt_training_images_are_replaced_and_reported_once_by_path_under_workers(tmp_path: Path) -> None:
    root, _, _ = _root(tmp_path)
    truncated = _truncate(root / "train2017" / "0003.png")
    garbage = _garbage(root / "train2017" / "0006.png")
    dm = CocoDataModule(root=str(root), batch_size=4, num_workers=2, **SMALL)
    dm.setup("fit")
    loader = dm.train_dataloader()  # made once and iterated every epoch, as Lightning does (persistent workers)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        epochs = [_ids(loader) for _ in range(2)]
    for ids in epochs:
        assert [len(b) for b in ids] == [4, 4]  # batches keep their size: the bad items were replaced
        assert {3, 6}.isdisjoint(i for b in ids for i in b)
    messages = _bad_image_warnings(caught)
    assert sum(str(truncated) in m for m in messages) == 1  # once per file over both epochs, from the main process
    assert sum(str(garbage) in m for m in messages) == 1
    assert any(f"{truncated}: unreadable image, skipped (truncated file; found in a DataLoader worker)" in m
               for m in messages)
    assert any(f"{garbage}: unreadable image, skipped (not an image file Pillow can identify" in m for m in messages)
    summaries = [m for m in messages if "images are unreadable and were skipped" in m]
    assert len(summaries) == 1  # the first epoch met them; the second met nothing new
    assert "instances_train2017.json: 2 of 8 images are unreadable and were skipped (2 new since the last summary; " \
           "0003.png, 0006.png); each was replaced in its batch by the next readable image" in summaries[0]
    assert dm.train_set.bad_image_log.count() == 2  # known-bad files are not decoded again


def test_truncated_image_read_without_workers_is_reported_with_its_reason(tmp_path: Path) -> None:
    root, _, _ = _root(tmp_path)
    truncated = _truncate(root / "train2017" / "0002.png")
    dm = CocoDataModule(root=str(root), batch_size=4, num_workers=0, **SMALL)
    dm.setup("fit")
    with pytest.warns(BadImageWarning) as caught:
        ids = _ids(dm.train_dataloader())
    assert [len(b) for b in ids] == [4, 4] and 2 not in {i for b in ids for i in b}
    first = _bad_image_warnings(caught)[0]
    assert first.startswith(f"{truncated}: unreadable image, skipped (OSError: ") and "truncated" in first
    assert "[1 unreadable of 8 in " in first


def test_corrupt_validation_image_is_left_out_never_duplicated(tmp_path: Path) -> None:
    root, _, val_ids = _root(tmp_path)
    _garbage(root / "val2017" / "0104.png")
    dm = CocoDataModule(root=str(root), batch_size=2, num_workers=2, **SMALL)
    dm.setup("validate")
    loader = dm.val_dataloader()
    with pytest.warns(BadImageWarning) as caught:
        list(itertools.islice(loader, 2))  # a partial pass (Lightning's sanity check) meets the file: no summary yet
        ids = _ids(loader)
    seen = [i for b in ids for i in b]
    assert seen == [i for i in val_ids if i != 104]  # each readable image once; the bad one not replaced
    summary = [m for m in _bad_image_warnings(caught) if "were skipped" in m]
    assert len(summary) == 1 and "1 of 6 images are unreadable" in summary[0]
    assert "COCO AP is computed over the predicted image ids" in summary[0]


def test_validation_batch_of_only_unreadable_images_is_left_out(tmp_path: Path) -> None:
    root, _, _ = _root(tmp_path)
    _garbage(root / "val2017" / "0103.png")
    _truncate(root / "val2017" / "0104.png")
    dm = CocoDataModule(root=str(root), batch_size=2, num_workers=0, **SMALL)
    dm.setup("validate")
    with pytest.warns(BadImageWarning):
        ids = _ids(dm.val_dataloader())
    assert ids == [[101, 102], [105, 106]]  # the middle batch (103, 104) came back empty and is not yielded


def test_bad_images_fail_stops_at_the_first_unreadable_file_naming_it(tmp_path: Path) -> None:
    root, _, _ = _root(tmp_path)
    truncated = _truncate(root / "train2017" / "0005.png")
    dm = CocoDataModule(root=str(root), batch_size=4, num_workers=0, bad_images="fail", **SMALL)
    dm.setup("fit")
    with pytest.raises(ImageReadError, match=rf"cannot read image {truncated}: OSError: .*truncated"):
        list(dm.train_dataloader())
    dm = CocoDataModule(root=str(root), batch_size=4, num_workers=2, bad_images="fail", **SMALL)
    dm.setup("fit")
    with pytest.raises(RuntimeError, match=rf"(?s)Caught ImageReadError in DataLoader worker.*{truncated}"):
        list(dm.train_dataloader())


def _lightning_ddp_loader(loader: SkippingDataLoader, rank: int, shuffle: bool) -> Any:
    """The loader Lightning builds for DDP rank ``rank`` of 2 (the DataLoader re-created with a DistributedSampler)."""
    from lightning.pytorch.utilities.data import _update_dataloader
    from torch.utils.data import DistributedSampler

    return _update_dataloader(loader, DistributedSampler(loader.dataset, num_replicas=2, rank=rank, shuffle=shuffle))


def test_ddp_ranks_keep_the_same_number_of_batches_with_unreadable_images(tmp_path: Path) -> None:
    from lightning.fabric.utilities.data import _replace_dunder_methods
    from torch.utils.data import BatchSampler, DataLoader

    root, _, val_ids = _root(tmp_path, n_train=10, n_val=7)
    for name in ("0002.png", "0004.png", "0005.png"):
        _garbage(root / "train2017" / name)
    _garbage(root / "val2017" / "0103.png")
    dm = CocoDataModule(root=str(root), batch_size=2, num_workers=0, **SMALL)
    dm.setup("fit")
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):  # as Lightning does
        train, val = dm.train_dataloader(), dm.val_dataloader()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadImageWarning)
        train_ranks = [_lightning_ddp_loader(train, rank, shuffle=True) for rank in (0, 1)]
        sizes = [[len(b) for b in _ids(loader)] for loader in train_ranks]
        val_ranks = [_lightning_ddp_loader(val, rank, shuffle=False) for rank in (0, 1)]
        val_seen = [i for loader in val_ranks for b in _ids(loader) for i in b]
    assert all(isinstance(loader, SkippingDataLoader) and isinstance(loader.collate_fn, DropNone)
               for loader in train_ranks + val_ranks)
    assert sizes == [[2, 2, 1], [2, 2, 1]]  # 5 items per rank on both ranks: same steps, no batch shrunk
    # 7 images over 2 ranks: every readable one predicted (DistributedSampler repeats one to even the ranks out;
    # the COCO gather drops that copy), the unreadable one on no rank and not replaced by another
    assert sorted(set(val_seen)) == [i for i in val_ids if i != 103] and len(val_seen) == 7


def _tiny_detection_module(dm: CocoDataModule):
    from vitkit.core import TransformerDecoder, ViTEncoder
    from vitkit.detection import DETR, HungarianMatcher, SetCriterion
    from vitkit.detection.module import DetectionModule

    torch.manual_seed(0)
    detr = DETR(ViTEncoder(patch_size=16, embed_dim=32, depth=1, num_heads=2, class_token=False),
                TransformerDecoder(dim=32, depth=1, num_heads=2, return_intermediate=True),
                num_classes=dm.num_classes, num_queries=5)
    return DetectionModule(detr, SetCriterion(HungarianMatcher()), num_classes=dm.num_classes, num_select=5,
                           label_to_cat_id=dm.label_to_cat_id,
                           class_names=dm.class_names, eval_backend="pycocotools")


def test_skipped_validation_image_leaves_coco_ap_over_the_readable_images(tmp_path: Path) -> None:
    import lightning as L

    from vitkit.eval.coco_eval import evaluate_coco

    root, _, val_ids = _root(tmp_path)
    _truncate(root / "val2017" / "0102.png")
    dm = CocoDataModule(root=str(root), batch_size=4, num_workers=0, **SMALL)
    module = _tiny_detection_module(dm)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    with pytest.warns(BadImageWarning) as caught:
        trainer.validate(module, datamodule=dm, verbose=False)
    messages = _bad_image_warnings(caught)
    assert any("0102.png: unreadable image, skipped" in m for m in messages)
    assert any("1 of 6 images are unreadable" in m and "COCO AP is computed over the predicted image ids" in m
               for m in messages)
    readable = [i for i in val_ids if i != 102]
    assert module.last_eval.num_images == len(readable) == 5
    assert {r["image_id"] for r in module.last_results} == set(readable)
    expected = evaluate_coco(dm.val_annotation_file, module.last_results, image_ids=readable, backend="pycocotools")
    assert module.last_eval.stats == expected.stats


def test_corrupt_caption_images_are_replaced_in_training_and_left_out_of_validation(tmp_path: Path) -> None:
    from vitkit.captioning.datamodule import CaptionDataModule

    root, _, val_ids = _root(tmp_path)
    _garbage(root / "train2017" / "0001.png")
    _truncate(root / "val2017" / "0106.png")
    dm = CaptionDataModule(root=str(root), batch_size=4, num_workers=0, train_size=32, val_size=32, max_size=64,
                           hflip_p=0.5, max_length=12)
    dm.setup("fit")
    with pytest.warns(BadImageWarning) as caught:
        train = list(dm.train_dataloader())
        val = list(dm.val_dataloader())
    assert [images.shape[0] for images, *_ in train] == [4, 4]
    assert [i for *_, ids in val for i in ids] == [i for i in val_ids if i != 106]
    messages = _bad_image_warnings(caught)
    assert sum("0001.png: unreadable image, skipped" in m for m in messages) == 1
    assert sum("0106.png: unreadable image, skipped" in m for m in messages) == 1


def test_training_image_with_extreme_aspect_ratio_is_resized_not_crashed() -> None:
    from vitkit.data.transforms import RandomShortestSideResize, detr_train_transforms

    image = tv_tensors.Image(torch.full((3, 1, 3000), 128, dtype=torch.uint8))  # 1 px tall, 3000 px wide
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[10.0, 0.0, 1500.0, 1.0]]), format="XYXY", canvas_size=(1, 3000))
    out, target = RandomShortestSideResize([32], max_size=64)(image, {"boxes": boxes, "labels": torch.tensor([0])})
    assert out.shape == (3, 1, 64) and target["boxes"].canvas_size == (1, 64)  # torchvision alone asks for 0 px
    torch.testing.assert_close(target["boxes"].as_subclass(torch.Tensor), torch.tensor([[10 * 64 / 3000, 0, 32, 1]]))
    torch.manual_seed(0)
    tf = detr_train_transforms(scales=(32,), max_size=64, crop=(16, 24), resize_before_crop=(32,), crop_p=0.5)
    for _ in range(4):
        out, _ = tf(image, {"boxes": boxes, "labels": torch.tensor([0])})
        assert min(out.shape[-2:]) >= 1
