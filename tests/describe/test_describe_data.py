"""Describe's data path (detection data whose boxes carry phrases): every box keeps its own phrase through flips,
resizes and crops that drop boxes; boxes without a phrase still train; the tokenizer; the evaluation references."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torchvision.ops import box_convert
from torchvision.transforms import v2

from vitkit.data import CocoDetection, make_shapes
from vitkit.data.shapes import COLORS
from vitkit.describe import RegionCaptionTransform, RegionIndex
from vitkit.describe.datamodule import DescribeDataModule
from vitkit.describe.regions import labels_and_ann_ids

pytestmark = pytest.mark.usefixtures("one_thread")

PHRASE = re.compile(r"^(?:a|an) (?:(?:small|large) )?(\w+) (\w+)$")  # colour, shape
SMALL = {"batch_size": 2, "num_workers": 0, "train_scales": [64, 80], "train_max_size": 128, "crop_resize": [64],
         "crop_size": (32, 48), "crop_p": 0.0, "val_size": 64, "val_max_size": 128}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 + 4 shapes images (half of them with a crowd region); every other annotation loses its caption."""
    paths = make_shapes(tmp_path_factory.mktemp("describe"), num_train=8, num_val=4, image_size=96, seed=0,
                        crowd_fraction=0.5)
    for split in ("train", "val"):
        path = paths[f"instances_{split}"]
        data = json.loads(path.read_text())
        for ann in data["annotations"][1::2]:
            del ann["caption"]
        plain = [a for a in data["annotations"] if not a["iscrowd"]]
        assert any("caption" in a for a in plain) and any("caption" not in a for a in plain)
        path.write_text(json.dumps(data))
    return paths["root"]


def _file(root: Path, split: str) -> dict[str, Any]:
    return json.loads((root / "annotations" / f"instances_{split}2017.json").read_text())


def _dm(root: Path, **kwargs: Any) -> DescribeDataModule:
    return DescribeDataModule(root=str(root), **{**SMALL, **kwargs})


def _by_image(data: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    """Image id -> its non-crowd annotations in file order (the detection targets' boxes before any transform)."""
    out: dict[int, list[dict[str, Any]]] = {im["id"]: [] for im in data["images"]}
    for ann in data["annotations"]:
        if not ann["iscrowd"]:
            out[ann["image_id"]].append(ann)
    return out


def _check_aligned(target: dict[str, Any], data: dict[str, Any], class_names: list[str]) -> None:
    """Box k's label (carried by torchvision), annotation id and phrase (carried by vitkit.describe) agree."""
    anns = {a["id"]: a for a in data["annotations"]}
    names = {c["id"]: c["name"] for c in data["categories"]}
    n = len(target["boxes"])
    assert target["labels"].shape == target["ann_ids"].shape == target["has_caption"].shape == (n,)
    assert target["has_caption"].dtype == torch.bool and len(target["captions"]) == n
    for label, ann_id, caption, has in zip(target["labels"].tolist(), target["ann_ids"].tolist(), target["captions"],
                                           target["has_caption"].tolist(), strict=True):
        ann = anns[ann_id]
        assert ann["image_id"] == target["image_id"] and not ann["iscrowd"]  # crowd regions stay out, as in detection
        assert names[ann["category_id"]] == class_names[label]
        assert caption == ann.get("caption") and has == (caption is not None)
        if caption is not None:
            colour, shape = PHRASE.match(caption).groups()
            assert shape == class_names[label] and colour in {name for name, _ in COLORS}, caption


@pytest.mark.parametrize("hflip_p", [0.0, 0.5])
def test_phrases_follow_their_boxes_through_flip_and_resize(root: Path, hflip_p: float) -> None:
    dm = _dm(root, hflip_p=hflip_p)
    dm.setup("fit")
    data = _file(root, "train")
    per_image, sizes = _by_image(data), {im["id"]: (im["width"], im["height"]) for im in data["images"]}
    mirrored_seen = set()
    for _ in range(3):
        for i in range(len(dm.train_set)):
            _, target = dm.train_set[i]
            _check_aligned(target, data, dm.class_names)
            mine = per_image[target["image_id"]]
            assert target["ann_ids"].tolist() == [a["id"] for a in mine]  # nothing dropped, file order
            if not mine:
                continue
            w, h = sizes[target["image_id"]]
            xywh = torch.tensor([a["bbox"] for a in mine], dtype=torch.float32)  # (n, 4) px
            orig = box_convert(xywh, "xywh", "cxcywh") / torch.tensor([w, h, w, h])  # (n, 4) normalised
            flipped = orig * torch.tensor([-1.0, 1, 1, 1]) + torch.tensor([1.0, 0, 0, 0])
            plain, mirrored = (torch.allclose(target["boxes"], b, atol=1e-4) for b in (orig, flipped))
            assert plain or mirrored, target["image_id"]
            mirrored_seen.add(mirrored and not plain)
    assert mirrored_seen == ({False} if hflip_p == 0 else {False, True})


def test_a_crop_that_drops_boxes_keeps_the_survivors_phrases(root: Path) -> None:
    """A centre crop through a pipeline of the detection kind (crop, then SanitizeBoundingBoxes): the surviving
    boxes, their ids and phrases are exactly those computed from the file."""
    crop = 40
    pipeline = v2.Compose([v2.CenterCrop(crop), v2.SanitizeBoundingBoxes()])
    ds = CocoDetection(root, "train", transforms=RegionCaptionTransform(pipeline, RegionIndex(
        root / "annotations" / "instances_train2017.json")))
    assert pipeline.transforms[1].labels_getter is labels_and_ann_ids
    data = _file(root, "train")
    per_image, sizes = _by_image(data), {im["id"]: (im["width"], im["height"]) for im in data["images"]}
    dropped = kept = 0
    for i in range(len(ds)):
        _, target = ds[i]
        _check_aligned(target, data, ds.class_names)
        w, h = sizes[target["image_id"]]
        left, top = round((w - crop) / 2), round((h - crop) / 2)
        expected_ids, expected_boxes = [], []
        for ann in per_image[target["image_id"]]:
            x, y, bw, bh = ann["bbox"]
            box = [min(max(v - off, 0), crop) for v, off in ((x, left), (y, top), (x + bw, left), (y + bh, top))]
            if box[2] - box[0] >= 1 and box[3] - box[1] >= 1:
                expected_ids.append(ann["id"])
                expected_boxes.append(box)
        dropped += len(per_image[target["image_id"]]) - len(expected_ids)
        kept += len(expected_ids)
        assert target["ann_ids"].tolist() == expected_ids
        xyxy = box_convert(target["boxes"] * crop, "cxcywh", "xyxy")  # (n, 4) px of the crop
        assert torch.allclose(xyxy, torch.tensor(expected_boxes, dtype=torch.float32).reshape(-1, 4), atol=1e-3)
    assert dropped > 0 and kept > 0


def test_detr_crop_branch_keeps_alignment_and_batches_tokens(root: Path) -> None:
    dm = _dm(root, crop_p=1.0, crop_size=(24, 40))
    dm.setup("fit")
    data = _file(root, "train")
    per_image = _by_image(data)
    order = {a["id"]: k for k, a in enumerate(data["annotations"])}
    dropped = 0
    for _ in range(3):
        for i in range(len(dm.train_set)):
            _, target = dm.train_set[i]
            _check_aligned(target, data, dm.class_names)
            positions = [order[a] for a in target["ann_ids"].tolist()]
            assert positions == sorted(positions)  # survivors keep their order
            dropped += len(per_image[target["image_id"]]) - len(positions)
    assert dropped > 0
    images, mask, targets = next(iter(dm.train_dataloader()))
    assert images.shape[0] == mask.shape[0] == len(targets) == 2
    assert len({t["caption_tokens"].shape[1] for t in targets}) == 1
    for t in targets:
        _check_aligned(t, data, dm.class_names)
        assert t["caption_tokens"].shape[0] == len(t["boxes"]) and t["caption_tokens"].dtype == torch.long


def test_boxes_without_a_phrase_still_train_and_get_pad_rows(root: Path) -> None:
    dm = _dm(root)
    dm.setup("validate")
    tok, data = dm.tokenizer, _file(root, "val")
    per_image = _by_image(data)
    without = 0
    for _, _, targets in dm.val_dataloader():
        assert len({t["caption_tokens"].shape[1] for t in targets}) == 1  # one T per batch
        for t in targets:
            _check_aligned(t, data, dm.class_names)
            assert t["ann_ids"].tolist() == [a["id"] for a in per_image[t["image_id"]]]  # every box, in order
            for row, has, caption in zip(t["caption_tokens"], t["has_caption"].tolist(), t["captions"], strict=True):
                if has:
                    assert row[0] == tok.bos_id and tok.eos_id in row.tolist()
                    assert tok.decode(row) == tok.normalize(caption)
                else:
                    assert caption is None and (row == tok.pad_id).all()
                    without += 1
    assert without > 0


@pytest.mark.parametrize("model", ["wordlevel", "bpe"])
def test_tokenizer_round_trips_the_training_phrases_and_reloads(root: Path, tmp_path: Path, model: str) -> None:
    dm = _dm(root, tokenizer_model=model, vocab_size=200, max_length=24)
    tok = dm.tokenizer
    phrases = [a["caption"] for a in _file(root, "train")["annotations"] if "caption" in a]
    assert sorted(dm.regions("train").phrases()) == sorted(phrases)
    tokens = tok.encode_batch(phrases, max_length=dm.hparams.max_length)  # (K, T)
    assert [tok.decode(row) for row in tokens] == [tok.normalize(p) for p in phrases]
    assert (dm.pad_id, dm.bos_id, dm.eos_id) == (0, 1, 2) and dm.vocab_size == tok.vocab_size

    tok.save(tmp_path / "tokenizer.json")
    again = _dm(root, tokenizer=str(tmp_path / "tokenizer.json"))
    assert again.tokenizer.to_str() == tok.to_str()
    other = _dm(root, tokenizer_model=model, vocab_size=6).tokenizer
    with pytest.raises(ValueError, match="does not fit"):
        dm.use_tokenizer(other, "the checkpoint")
    with pytest.raises(FileNotFoundError, match="no tokenizer file"):
        _dm(root, tokenizer=str(tmp_path / "missing.json"))


def test_boxes_dropped_for_a_wrong_image_size_take_their_phrase_along(root: Path, tmp_path: Path) -> None:
    """The file says the image is wider than its pixels: the dataset clips its boxes to the decoded image and drops
    one that lies beyond it; the phrases follow the boxes that remain."""
    copy = tmp_path / "wide"
    shutil.copytree(root, copy)
    path = copy / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    image = next(im for im in data["images"] if _by_image(data)[im["id"]])
    decoded_width = image["width"]
    image["width"] += 60
    first = next(k for k, a in enumerate(data["annotations"]) if a["image_id"] == image["id"])
    data["annotations"].insert(first + 1, {"id": 10**6, "image_id": image["id"], "category_id": 1, "iscrowd": 0,
                                           "bbox": [decoded_width + 10.0, 5.0, 20.0, 20.0], "area": 400.0,
                                           "caption": "a red square"})
    path.write_text(json.dumps(data))
    ds = CocoDetection(copy, "train", transforms=RegionCaptionTransform(None, RegionIndex(path)))
    with pytest.warns(UserWarning, match="decodes to width"):
        _, target = ds[ds.ids.index(image["id"])]
    _check_aligned(target, data, ds.class_names)
    assert target["ann_ids"].tolist() == [a["id"] for a in _by_image(data)[image["id"]] if a["id"] != 10**6]


def test_val_references_match_the_annotation_file(root: Path) -> None:
    dm = _dm(root)
    refs = dm.val_references()
    data = _file(root, "val")
    assert list(refs) == dm.val_set.ids == sorted(im["id"] for im in data["images"])
    crowd = 0
    for image in data["images"]:
        mine = [a for a in data["annotations"] if a["image_id"] == image["id"]]
        ref = refs[image["id"]]
        assert ref.ann_ids.tolist() == [a["id"] for a in mine]
        assert ref.boxes.shape == (len(mine), 4) and ref.boxes.tolist() == [a["bbox"] for a in mine]
        assert ref.category_ids.tolist() == [a["category_id"] for a in mine]
        assert ref.iscrowd.tolist() == [bool(a["iscrowd"]) for a in mine]
        assert ref.captions == [a.get("caption") for a in mine]
        crowd += int(ref.iscrowd.sum())
    assert crowd > 0


def test_hflip_p_is_checked_and_warns_about_left_right_phrases(root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="hflip_p"):
        _dm(root, hflip_p=1.5)
    copy = tmp_path / "sided"
    shutil.copytree(root, copy)
    path = copy / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["caption"] = "the red square on the left"
    path.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="1 of the .* say 'left' or 'right'"):
        _dm(copy, hflip_p=0.5).setup("fit")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _dm(copy, hflip_p=0.0).setup("fit")
