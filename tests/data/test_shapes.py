"""The synthetic shapes generator: determinism, COCO validity, annotation semantics, captions, ensure_shapes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from vitkit.data.shapes import ensure_shapes, make_shapes

SMALL = {"num_train": 20, "num_val": 8}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_shapes(tmp_path_factory.mktemp("shapes"), seed=0, **SMALL)


def _files(paths: dict[str, Path]) -> dict[str, bytes]:
    root = paths["root"]
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(shapes: dict[str, Path], tmp_path: Path) -> None:
    first = _files(shapes)
    again = _files(make_shapes(tmp_path / "again", seed=0, **SMALL))
    assert first.keys() == again.keys()
    assert all(first[k] == again[k] for k in first), [k for k in first if first[k] != again[k]]
    other = _files(make_shapes(tmp_path / "other", seed=1, **SMALL))
    assert other.keys() == first.keys()  # same file names, different content
    assert other["annotations/instances_train2017.json"] != first["annotations/instances_train2017.json"]
    assert other["annotations/captions_val2017.json"] != first["annotations/captions_val2017.json"]
    jpgs = [k for k in first if k.endswith(".jpg")]
    assert len(jpgs) == 28
    assert sum(first[k] != other[k] for k in jpgs) == len(jpgs)


@pytest.mark.parametrize("split", ["train", "val"])
def test_instances_are_valid_coco(shapes: dict[str, Path], split: str) -> None:
    coco = COCO(str(shapes[f"instances_{split}"]))
    n_images = SMALL[f"num_{split}"]
    assert len(coco.getImgIds()) == n_images
    cat_ids = coco.getCatIds()
    assert cat_ids == [1, 3, 7, 9]  # non-contiguous on purpose
    assert {c["supercategory"] for c in coco.loadCats(cat_ids)} == {"shape"}
    anns = coco.loadAnns(coco.getAnnIds())
    assert len({a["id"] for a in anns}) == len(anns)

    for img in coco.loadImgs(coco.getImgIds()):
        with Image.open(shapes[f"{split}_images"] / img["file_name"]) as im:
            assert im.size == (img["width"], img["height"])
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]])):
            x, y, w, h = ann["bbox"]
            assert x >= 0 and y >= 0 and x + w <= img["width"] and y + h <= img["height"]
            assert 0 < ann["area"] <= w * h
            assert ann["iscrowd"] in (0, 1) and ann["category_id"] in cat_ids
            # area is the segment's pixel count and bbox its tight box
            m = coco.annToMask(ann).astype(bool)
            assert m.sum() == ann["area"] == mask_utils.area(ann["segmentation"])
            ys, xs = np.nonzero(m)
            assert [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()] == ann["bbox"]

    non_crowd = [a for a in anns if not a["iscrowd"]]
    per_image = {i: len(coco.getAnnIds(imgIds=[i], iscrowd=False)) for i in coco.getImgIds()}
    assert min(per_image.values()) == 0  # images without objects are present
    assert max(per_image.values()) <= 4
    assert any(a["iscrowd"] for a in anns)
    assert any(a["area"] < 32**2 for a in non_crowd)  # some small objects


def test_images_vary_in_size_and_are_textured(shapes: dict[str, Path]) -> None:
    coco = COCO(str(shapes["instances_train"]))
    sizes = {(i["height"], i["width"]) for i in coco.dataset["images"]}
    assert len(sizes) > 5 and all(160 <= h <= 224 and 160 <= w <= 224 for h, w in sizes)
    empty = next(i for i in coco.dataset["images"] if not coco.getAnnIds(imgIds=[i["id"]]))
    pixels = np.asarray(Image.open(shapes["train_images"] / empty["file_name"]), dtype=np.float32)
    assert pixels.std() > 4  # noise/texture, not a flat fill


def test_overlaps_exist(tmp_path: Path) -> None:
    coco = COCO(str(make_shapes(tmp_path, num_train=60, num_val=0, seed=3)["instances_train"]))
    overlapping = 0
    for img_id in coco.getImgIds():
        boxes = [a["bbox"] for a in coco.loadAnns(coco.getAnnIds(imgIds=[img_id]))]
        for i, (x1, y1, w1, h1) in enumerate(boxes):
            for x2, y2, w2, h2 in boxes[i + 1:]:
                overlapping += min(x1 + w1, x2 + w2) > max(x1, x2) and min(y1 + h1, y2 + h2) > max(y1, y2)
    assert overlapping > 0


@pytest.mark.parametrize("split", ["train", "val"])
def test_captions(shapes: dict[str, Path], split: str) -> None:
    caps = json.loads(shapes[f"captions_{split}"].read_text())
    inst = json.loads(shapes[f"instances_{split}"].read_text())
    assert caps["images"] == inst["images"]
    assert len({c["id"] for c in caps["annotations"]}) == len(caps["annotations"])
    by_image: dict[int, list[str]] = {}
    for c in caps["annotations"]:
        by_image.setdefault(c["image_id"], []).append(c["caption"])
    assert set(by_image) == {i["id"] for i in inst["images"]}
    with_objects = {a["image_id"] for a in inst["annotations"] if not a["iscrowd"]}
    colors = ("red", "green", "blue", "yellow", "purple", "orange")
    for image_id, texts in by_image.items():
        assert len(texts) == 5 and len(set(texts)) == 5, texts
        assert all(t and t == t.strip() and "  " not in t for t in texts)
        if image_id in with_objects:
            assert any(c in t for t in texts for c in colors)
        else:
            assert all(("empty" in t or "no shapes" in t or "blank" in t or "nothing" in t) for t in texts)
    assert len(with_objects) < len(by_image)  # some empty images were captioned


def test_counts_in_captions_match_annotations(shapes: dict[str, Path]) -> None:
    """The 'N shapes on a textured ... background' caption (when drawn) states the true object count."""
    caps = json.loads(shapes["captions_train"].read_text())["annotations"]
    anns = json.loads(shapes["instances_train"].read_text())["annotations"]
    words = {"two": 2, "three": 3, "four": 4}
    checked = 0
    for c in caps:
        first, *rest = c["caption"].split()
        if first in words and rest[:1] == ["shapes"]:
            n = sum(1 for a in anns if a["image_id"] == c["image_id"] and not a["iscrowd"])
            assert n == words[first], c
            checked += 1
    assert checked > 0


def test_ensure_shapes_generates_once(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    paths = ensure_shapes(root, num_train=6, num_val=2)
    stamp = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    assert paths["instances_train"].is_file() and len(list(paths["train_images"].glob("*.jpg"))) == 6
    again = ensure_shapes(root, num_train=6, num_val=2)
    assert again == paths
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == stamp
    with pytest.warns(UserWarning, match="other arguments"):
        ensure_shapes(root, num_train=50)
    assert len(list(paths["train_images"].glob("*.jpg"))) == 6  # warned, not regenerated


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="min_objects"):
        make_shapes(tmp_path, num_train=1, num_val=0, min_objects=3, max_objects=2)
    with pytest.raises(ValueError, match="64"):
        make_shapes(tmp_path, num_train=1, num_val=0, image_size=40)
