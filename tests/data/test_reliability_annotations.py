"""Malformed COCO annotation files (issue 7, item 1): each case is an error naming the file, the entry and the field,
or is sanitised with ONE counted warning per kind. The rules are in vitkit/data/annotations.py's docstring."""

from __future__ import annotations

import copy
import json
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from vitkit.data.annotations import AnnotationWarning
from vitkit.data.coco import CocoDetection
from vitkit.data.coco_captions import CocoCaptions
from vitkit.data.images import ImageReadError

pytestmark = pytest.mark.usefixtures("one_thread")

# 3 images (w x h): 40 x 30, 40 x 30, 32 x 32; 4 boxes; 2 categories with non-contiguous ids.
INSTANCES: dict[str, Any] = {
    "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
               {"id": 2, "file_name": "b.png", "width": 40, "height": 30},
               {"id": 3, "file_name": "c.png", "width": 32, "height": 32}],
    "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [2, 3, 10, 8], "area": 80, "iscrowd": 0},
                    {"id": 2, "image_id": 1, "category_id": 9, "bbox": [20, 5, 10, 10], "area": 100, "iscrowd": 0},
                    {"id": 3, "image_id": 2, "category_id": 5, "bbox": [0, 0, 40, 30], "area": 1200, "iscrowd": 0},
                    {"id": 4, "image_id": 3, "category_id": 9, "bbox": [4, 4, 8, 8], "area": 64, "iscrowd": 0}],
    "categories": [{"id": 5, "name": "cat"}, {"id": 9, "name": "dog"}],
}
CAPTIONS: dict[str, Any] = {
    "images": INSTANCES["images"],
    "annotations": [{"id": 10 + i, "image_id": 1 + i % 3, "caption": f"a picture number {i}"} for i in range(6)],
}


def _instances(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(INSTANCES)
    data.update(copy.deepcopy(changes))
    return data


def _write(root: Path, data: Any, split: str = "x", kind: str = "instances", images: bool = True) -> Path:
    """Write ``data`` as root/annotations/{kind}_{split}2017.json and the images of INSTANCES into root/{split}2017."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / f"{split}2017").mkdir(exist_ok=True)
    if images:
        for info in INSTANCES["images"]:
            Image.new("RGB", (info["width"], info["height"]), (30 * info["id"], 90, 160)).save(
                root / f"{split}2017" / info["file_name"])
    path = root / "annotations" / f"{kind}_{split}2017.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _load(root: Path, data: Any, **kwargs: Any) -> tuple[CocoDetection, list[str]]:
    """CocoDetection of ``data`` and the AnnotationWarning messages its construction issued."""
    _write(root, data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoDetection(root, "x", **kwargs)
    return ds, [str(w.message) for w in caught if issubclass(w.category, AnnotationWarning)]


def _targets_px(ds: CocoDetection) -> dict[int, list[list[float]]]:
    """image id -> its target boxes as xyxy pixels (no transforms: normalised by the decoded size)."""
    out = {}
    for i in range(len(ds)):
        image, target = ds[i]
        h, w = image.shape[-2:]
        cx, cy, bw, bh = target["boxes"].unbind(-1)
        xyxy = torch.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], -1)
        out[target["image_id"]] = [[round(v, 3) for v in box] for box in xyxy.tolist()]
    return out


# ------------------------------------------------------------------------------------------- errors: file level


def test_annotation_file_that_is_not_json_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, '{"images": [}')
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))} is not valid JSON: .*line 1 column"):
        CocoDetection(tmp_path, "x")


def test_annotation_file_holding_a_list_is_an_error(tmp_path: Path) -> None:
    _write(tmp_path, "[]")
    with pytest.raises(ValueError, match=r"instances_x2017\.json holds a JSON list, not an object"):
        CocoDetection(tmp_path, "x")


@pytest.mark.parametrize("key", ["images", "annotations", "categories"])
def test_missing_top_level_key_is_an_error_naming_file_and_key(tmp_path: Path, key: str) -> None:
    data = _instances()
    del data[key]
    with pytest.raises(ValueError, match=rf"instances_x2017\.json has no '{key}' list"):
        _load(tmp_path, data)


# ------------------------------------------------------------------------------------------ errors: entry level


@pytest.mark.parametrize("field", ["id", "image_id", "category_id", "bbox"])
def test_annotation_missing_a_required_field_is_an_error_naming_id_and_field(tmp_path: Path, field: str) -> None:
    data = _instances()
    del data["annotations"][2][field]
    where = r"annotations\[2\]" if field == "id" else r"annotation id 3 \(annotations\[2\]\)"
    with pytest.raises(ValueError, match=rf"instances_x2017\.json: {where} has no field '{field}'"):
        _load(tmp_path, data)


@pytest.mark.parametrize("field", ["id", "file_name", "width", "height"])
def test_image_entry_missing_a_required_field_is_an_error_naming_id_and_field(tmp_path: Path, field: str) -> None:
    data = _instances()
    del data["images"][1][field]
    where = r"images\[1\]" if field == "id" else r"image id 2 \(images\[1\]\)"
    with pytest.raises(ValueError, match=rf"instances_x2017\.json: {where} has no field '{field}'"):
        _load(tmp_path, data)


def test_image_with_zero_width_is_an_error(tmp_path: Path) -> None:
    data = _instances()
    data["images"][0]["width"] = 0
    with pytest.raises(ValueError, match=r"image id 1 \(images\[0\]\): field 'width' must be a positive number"):
        _load(tmp_path, data)


@pytest.mark.parametrize("bbox", [[1, 2, 3], [1, 2, 3, "4"], [1, 2, 3, float("nan")], None])
def test_bbox_that_is_not_four_finite_numbers_is_an_error(tmp_path: Path, bbox: Any) -> None:
    data = _instances()
    data["annotations"][1]["bbox"] = bbox
    with pytest.raises(ValueError, match=r"annotation id 2 \(annotations\[1\]\): field 'bbox' must be 4 finite"):
        _load(tmp_path, data)


def test_unknown_category_id_is_an_error_naming_annotation_id_and_field(tmp_path: Path) -> None:
    data = _instances()
    data["annotations"][1]["category_id"] = 42
    data["annotations"][3]["category_id"] = 43
    with pytest.raises(ValueError) as err:
        _load(tmp_path, data)
    msg = str(err.value)
    assert "instances_x2017.json: annotation id 2 (annotations[1]): field 'category_id' is 42" in msg
    assert "not a category id of 'categories' (5, 9)" in msg
    assert "(2 entries have this problem: 2, 4)" in msg


def test_annotation_of_unknown_image_id_is_an_error(tmp_path: Path) -> None:
    data = _instances()
    data["annotations"][0]["image_id"] = 77
    with pytest.raises(ValueError, match=r"annotation id 1 \(annotations\[0\]\): field 'image_id' is 77, which is not"):
        _load(tmp_path, data)


def test_duplicate_annotation_ids_are_an_error_naming_both_entries(tmp_path: Path) -> None:
    data = _instances()
    data["annotations"][3]["id"] = 2
    with pytest.raises(ValueError, match=r"annotation id 2 appears twice \(annotations\[1\] and annotations\[3\]\), "
                                         r"field 'id'; COCOeval indexes ground truth by annotation id"):
        _load(tmp_path, data)


def test_duplicate_image_ids_are_an_error(tmp_path: Path) -> None:
    data = _instances()
    data["images"][2]["id"] = 1
    with pytest.raises(ValueError, match=r"image id 1 appears twice \(images\[0\] and images\[2\]\)"):
        _load(tmp_path, data)


def test_duplicate_category_ids_and_no_categories_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"category id 5 appears twice"):
        _load(tmp_path / "a", _instances(categories=[{"id": 5, "name": "cat"}, {"id": 5, "name": "lion"}]))
    with pytest.raises(ValueError, match=r"defines no categories"):
        _load(tmp_path / "b", _instances(categories=[], annotations=[]))


# ------------------------------------------------------------------------------------------------- sanitised


def test_clean_file_gives_no_warning_and_exact_targets(tmp_path: Path) -> None:
    ds, caught = _load(tmp_path, _instances())
    assert caught == []
    assert ds.cat_ids == [5, 9] and ds.class_names == ["cat", "dog"]
    assert _targets_px(ds) == {1: [[2, 3, 12, 11], [20, 5, 30, 15]], 2: [[0, 0, 40, 30]], 3: [[4, 4, 12, 12]]}


def test_bbox_with_zero_width_is_dropped_with_one_counted_warning(tmp_path: Path) -> None:
    data = _instances()
    data["annotations"][0]["bbox"] = [2, 3, 0, 8]  # zero width
    data["annotations"][3]["bbox"] = [4, 4, 8, -1]  # negative height
    ds, caught = _load(tmp_path, data)
    assert len(caught) == 1
    assert caught[0] == (f"{tmp_path / 'annotations' / 'instances_x2017.json'}: dropped 2 annotations with zero or "
                         "negative width/height (ids 1, 4); they are not trained on, and COCOeval on this file still "
                         "counts each as a ground-truth box no detection can match")
    assert _targets_px(ds) == {1: [[20, 5, 30, 15]], 2: [[0, 0, 40, 30]], 3: []}
    _, target = ds[0]
    assert target["labels"].tolist() == [1]  # the dropped box took its label with it


def test_boxes_outside_the_image_are_clipped_with_one_counted_warning(tmp_path: Path) -> None:
    data = _instances()
    data["annotations"][1]["bbox"] = [35, 25, 10, 10]  # 5 px past the right and bottom edges of 40 x 30
    data["annotations"][3]["bbox"] = [-2.5, 4, 8, 8]  # 2.5 px left of the image
    ds, caught = _load(tmp_path, data)
    assert caught == [f"{tmp_path / 'annotations' / 'instances_x2017.json'}: clipped 2 boxes that extend past their "
                      "image to the image (ids 2, 4; at most 5.00 px outside); COCOeval on this file compares "
                      "detections with the unclipped boxes"]
    assert _targets_px(ds) == {1: [[2, 3, 12, 11], [35, 25, 40, 30]], 2: [[0, 0, 40, 30]], 3: [[0, 4, 5.5, 12]]}


def test_box_entirely_outside_the_image_is_dropped_with_one_counted_warning(tmp_path: Path) -> None:
    data = _instances()
    data["annotations"][2]["bbox"] = [50, 0, 10, 10]  # right of a 40 px wide image
    ds, caught = _load(tmp_path, data)
    assert len(caught) == 1 and "dropped 1 annotations lying entirely outside their image (ids 3)" in caught[0]
    assert _targets_px(ds)[2] == []


def test_crowd_regions_are_not_sanitised_or_counted(tmp_path: Path) -> None:
    data = _instances()
    data["annotations"][2].update(iscrowd=1, bbox=[0, 0, 0, 0])
    ds, caught = _load(tmp_path, data)
    assert caught == [] and _targets_px(ds)[2] == []


def test_annotation_without_area_gets_one_counted_warning(tmp_path: Path) -> None:
    data = _instances()
    for a in data["annotations"][:2]:
        del a["area"]
    _, caught = _load(tmp_path, data)
    assert len(caught) == 1 and "2 annotations have no 'area' (ids 1, 2)" in caught[0]
    assert "width x height" in caught[0]  # what evaluation uses instead (next test)


@pytest.mark.parametrize("backend", ["pycocotools", "faster"])
def test_ground_truth_without_area_evaluates_as_with_box_areas(tmp_path: Path, backend: str) -> None:
    """pycocotools' COCOeval raised KeyError 'area' on such a file (after a whole training epoch); evaluation now
    fills in w * h, the stats equal those of the file with those areas given."""
    from vitkit.eval.coco_eval import evaluate_coco

    given = tmp_path / "given.json"
    given.write_text(json.dumps(_instances()))  # its areas are the boxes' w * h
    missing = _instances()
    for a in missing["annotations"]:
        del a["area"]
    without = tmp_path / "without.json"
    without.write_text(json.dumps(missing))
    results = [{"image_id": 1, "category_id": 5, "bbox": [2, 3, 10, 9], "score": 0.9},
               {"image_id": 1, "category_id": 9, "bbox": [18, 5, 10, 10], "score": 0.8},
               {"image_id": 2, "category_id": 5, "bbox": [1, 0, 38, 30], "score": 0.7},
               {"image_id": 3, "category_id": 5, "bbox": [4, 4, 8, 8], "score": 0.6}]
    expected = evaluate_coco(given, results, backend=backend).stats
    assert evaluate_coco(without, results, backend=backend).stats == expected
    assert expected["APs"] > 0 and expected["APm"] > 0  # the small and medium ranges both hold boxes


def test_image_file_missing_on_disk_is_skipped_with_one_counted_warning(tmp_path: Path) -> None:
    _write(tmp_path, _instances())
    (tmp_path / "x2017" / "b.png").unlink()
    (tmp_path / "x2017" / "c.png").unlink()
    with pytest.warns(AnnotationWarning) as caught:
        ds = CocoDetection(tmp_path, "x", bad_images="skip")
    assert len(caught) == 1
    assert (f"instances_x2017.json: left out 2 of 3 images whose file is missing from {tmp_path / 'x2017'} "
            "(ids 2, 3; e.g. field 'file_name' 'b.png')") in str(caught[0].message)
    assert ds.ids == [1] and len(ds) == 1 and ds[0][1]["image_id"] == 1


def test_image_file_missing_on_disk_fails_fast_with_bad_images_fail(tmp_path: Path) -> None:
    _write(tmp_path, _instances())
    (tmp_path / "x2017" / "b.png").unlink()
    with pytest.raises(ImageReadError, match=r"x2017/b\.png: file not found \(.*instances_x2017\.json: image id 2, "
                                             r"field 'file_name'; 1 of 3 image files are missing"):
        CocoDetection(tmp_path, "x", bad_images="fail")


def test_image_file_in_a_subfolder_is_found(tmp_path: Path) -> None:
    data = _instances()
    data["images"][0]["file_name"] = "sub/a.png"
    _write(tmp_path, data)
    (tmp_path / "x2017" / "sub").mkdir()
    (tmp_path / "x2017" / "a.png").rename(tmp_path / "x2017" / "sub" / "a.png")
    assert CocoDetection(tmp_path, "x", bad_images="fail").ids == [1, 2, 3]


def test_dropped_degenerate_box_still_counts_as_a_miss_in_coco_eval_of_the_original_file(tmp_path: Path) -> None:
    """The warning's claim: COCOeval reads the original file, so a dropped box is ground truth nobody can match."""
    from vitkit.eval.coco_eval import evaluate_coco

    data = _instances()
    data["annotations"][0]["bbox"] = [2, 3, 0, 8]
    ds, _ = _load(tmp_path, data)
    results = []  # perfect detections of every kept target
    for image_id, boxes in _targets_px(ds).items():
        _, target = ds[ds.ids.index(image_id)]
        for (x0, y0, x1, y1), label in zip(boxes, target["labels"].tolist(), strict=True):
            results.append({"image_id": image_id, "category_id": ds.cat_ids[label], "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "score": 0.9})
    for backend in ("faster", "pycocotools"):
        stats = evaluate_coco(ds.ann_file, results, backend=backend).stats
        assert stats["AR100"] == pytest.approx((0.5 + 1.0) / 2)  # category 5: 1 of 2 found; category 9: 2 of 2
        assert stats["AP"] < 1.0


# ------------------------------------------------------------------------------------------------------ captions


def _captions(root: Path, data: Any, **kwargs: Any) -> tuple[CocoCaptions, list[str]]:
    _write(root, data, kind="captions")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoCaptions(root, "x", **kwargs)
    return ds, [str(w.message) for w in caught if issubclass(w.category, AnnotationWarning)]


@pytest.mark.parametrize("field", ["image_id", "caption"])
def test_caption_missing_a_required_field_is_an_error_naming_id_and_field(tmp_path: Path, field: str) -> None:
    data = copy.deepcopy(CAPTIONS)
    del data["annotations"][4][field]
    with pytest.raises(ValueError, match=rf"captions_x2017\.json: annotations\[4\] needs 'image_id' and 'caption' "
                                         rf"\(annotation id 14 \(annotations\[4\]\) has no field '{field}'"):
        _captions(tmp_path, data)


def test_caption_without_id_is_an_error(tmp_path: Path) -> None:
    data = copy.deepcopy(CAPTIONS)
    del data["annotations"][1]["id"]
    with pytest.raises(ValueError, match=r"annotations\[1\]: field 'id' must be an integer, got '<missing>'"):
        _captions(tmp_path, data)


def test_caption_image_without_file_name_is_an_error(tmp_path: Path) -> None:
    data = copy.deepcopy(CAPTIONS)
    del data["images"][2]["file_name"]
    with pytest.raises(ValueError, match=r"captions_x2017\.json: image id 3 \(images\[2\]\) has no field 'file_name'"):
        _captions(tmp_path, data)


def test_duplicate_caption_annotation_ids_are_an_error(tmp_path: Path) -> None:
    data = copy.deepcopy(CAPTIONS)
    data["annotations"][5]["id"] = 10
    with pytest.raises(ValueError, match=r"annotation id 10 appears twice \(annotations\[0\] and annotations\[5\]\)"):
        _captions(tmp_path, data)


def test_caption_file_holding_a_list_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"captions_x2017\.json holds a JSON list"):
        _captions(tmp_path, "[1, 2]")


def test_blank_captions_are_dropped_with_one_counted_warning(tmp_path: Path) -> None:
    data = copy.deepcopy(CAPTIONS)
    data["annotations"][0]["caption"] = "   "
    data["annotations"][3]["caption"] = ""
    ds, caught = _captions(tmp_path, data)
    assert len(caught) == 2  # blank captions, then image 1 left without a caption
    assert caught[0].endswith("captions_x2017.json: dropped 2 blank captions (ids 10, 13); they would teach the model "
                              "to stop at once")
    assert "1 image(s) have no caption and are left out, e.g. ids [1]" in caught[1]
    assert ds.ids == [2, 3] and all(r.strip() for refs in ds.references.values() for r in refs)


def test_caption_image_file_missing_on_disk_is_skipped_with_one_counted_warning(tmp_path: Path) -> None:
    _write(tmp_path, CAPTIONS, kind="captions")
    (tmp_path / "x2017" / "a.png").unlink()
    with pytest.warns(AnnotationWarning, match=r"left out 1 of 3 images whose file is missing .*\(ids 1;") as caught:
        ds = CocoCaptions(tmp_path, "x", bad_images="skip")
    assert len(caught) == 1 and ds.ids == [2, 3]
    with pytest.raises(ImageReadError, match=r"a\.png: file not found .*image id 1, field 'file_name'"):
        CocoCaptions(tmp_path, "x", bad_images="fail")


# --------------------------------------------------------------------------------------------------- datamodules


def _coco_root(root: Path, val: Any = None, train: Any = None) -> Path:
    _write(root, _instances() if train is None else train, split="train")
    _write(root, _instances() if val is None else val, split="val")
    return root


def test_datamodule_with_a_non_json_val_file_is_an_error_at_construction(tmp_path: Path) -> None:
    from vitkit.detection.datamodule import CocoDataModule

    root = _coco_root(tmp_path, val="not json at all")
    with pytest.raises(ValueError, match=r"instances_val2017\.json is not valid JSON"):
        CocoDataModule(root=str(root), num_workers=0)


def test_datamodule_with_train_and_val_categories_differing_is_an_error_at_setup(tmp_path: Path) -> None:
    from vitkit.detection.datamodule import CocoDataModule

    train = _instances(categories=[{"id": 5, "name": "cat"}, {"id": 9, "name": "dog"}, {"id": 11, "name": "cow"}])
    dm = CocoDataModule(root=str(_coco_root(tmp_path, train=train)), num_workers=0)
    with pytest.raises(ValueError, match=r"define different categories \(ids \[5, 9, 11\] vs \[5, 9\]\)"):
        dm.setup("fit")


def test_datamodule_bad_images_must_be_skip_or_fail(tmp_path: Path) -> None:
    from vitkit.captioning.datamodule import CaptionDataModule
    from vitkit.detection.datamodule import CocoDataModule

    root = _coco_root(tmp_path)
    with pytest.raises(ValueError, match=r"data\.bad_images must be 'skip' .* or 'fail' .*, got 'ignore'"):
        CocoDataModule(root=str(root), bad_images="ignore")
    for split in ("train", "val"):
        _write(root, CAPTIONS, split=split, kind="captions", images=False)
    with pytest.raises(ValueError, match=r"data\.bad_images must be"):
        CaptionDataModule(root=str(root), bad_images="retry")
