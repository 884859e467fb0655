"""The Visual Genome converter: a hand-made pair of VG files -> the expected COCO files (boxes, ids, captions, one
category), the sanitising rules, the split, errors naming the file, entry and field, and tools/convert_vg.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pycocotools.coco import COCO

from vitkit.cli.main import help_text
from vitkit.data.annotations import AnnotationWarning, check_instances
from vitkit.data.region_captions import read_region_captions
from vitkit.data.visual_genome import convert_visual_genome

REPO = Path(__file__).resolve().parents[2]


def _region(rid: int, image_id: int, phrase: str, x: float, y: float, w: float, h: float) -> dict[str, Any]:
    return {"region_id": rid, "image_id": image_id, "phrase": phrase, "x": x, "y": y, "width": w, "height": h}


def _vg() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(region_descriptions, image_data) as VG v1.2 writes them, with one case of each sanitising rule."""
    images = [
        {"image_id": 1, "width": 800, "height": 600, "url": "https://cs.stanford.edu/people/rak248/VG_100K_2/1.jpg",
         "coco_id": None, "flickr_id": None},
        {"image_id": 2, "width": 640, "height": 480, "url": "https://cs.stanford.edu/people/rak248/VG_100K/2.jpg",
         "coco_id": 9, "flickr_id": None},
        {"image_id": 3, "width": 100, "height": 100, "url": "https://cs.stanford.edu/people/rak248/VG_100K/3.jpg"},
    ]
    regions = [
        {"id": 1, "regions": [
            _region(10, 1, " man  riding a\thorse ", 10, 20, 30, 40),
            _region(11, 1, "the sky", 700, -5, 200, 50),  # clipped to [700, 0, 100, 45]
            _region(12, 1, "   ", 1, 1, 5, 5),  # empty phrase: dropped
            _region(13, 1, "a line", 1, 1, 0, 5),  # zero width: dropped
        ]},
        {"id": 2, "regions": [
            _region(20, 2, "green tree", 0.5, 0, 639.5, 480),
            _region(21, 2, "far away", 700, 0, 10, 10),  # outside the image: dropped
        ]},
        {"id": 3, "regions": [_region(30, 3, "x" * 30, 0, 0, 10, 10)]},  # too long for max_chars=20: image left out
        {"id": 9, "regions": [_region(90, 9, "a ghost", 0, 0, 1, 1)]},  # image 9 is not in image_data: dropped
    ]
    return regions, images


def _files(tmp_path: Path, regions: Any = None, images: Any = None) -> tuple[Path, Path]:
    default_regions, default_images = _vg()
    r, i = tmp_path / "region_descriptions.json", tmp_path / "image_data.json"
    r.write_text(json.dumps(default_regions if regions is None else regions))
    i.write_text(json.dumps(default_images if images is None else images))
    return r, i


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def test_converts_to_the_expected_coco_files(tmp_path: Path) -> None:
    regions, images = _files(tmp_path)
    with pytest.warns(AnnotationWarning) as caught:
        result = convert_visual_genome(regions, images, tmp_path / "out", val_ids=[2], max_chars=20)
    train, val = _load(result.paths["instances_train"]), _load(result.paths["instances_val"])
    assert result.paths["instances_train"] == tmp_path / "out" / "annotations" / "instances_train2017.json"
    assert train["categories"] == val["categories"] == [{"id": 1, "name": "region", "supercategory": "region"}]
    assert train["images"] == [{"id": 1, "file_name": "1.jpg", "width": 800, "height": 600}]
    assert train["annotations"] == [
        {"id": 10, "image_id": 1, "category_id": 1, "bbox": [10.0, 20.0, 30.0, 40.0], "area": 1200.0, "iscrowd": 0,
         "caption": "man riding a horse"},
        {"id": 11, "image_id": 1, "category_id": 1, "bbox": [700.0, 0.0, 100.0, 45.0], "area": 4500.0, "iscrowd": 0,
         "caption": "the sky"},
    ]
    assert val["images"] == [{"id": 2, "file_name": "2.jpg", "width": 640, "height": 480}]
    assert val["annotations"] == [{"id": 20, "image_id": 2, "category_id": 1, "bbox": [0.5, 0.0, 639.5, 480.0],
                                   "area": 639.5 * 480, "iscrowd": 0, "caption": "green tree"}]
    assert (result.images, result.annotations) == ({"train": 1, "val": 1}, {"train": 2, "val": 1})

    notes = [str(w.message) for w in caught]
    assert notes == result.warnings and len(notes) == 7
    for says in ("dropped 1 regions with zero or negative width/height (region ids 13)",
                 "dropped 1 regions lying entirely outside their image (region ids 21)",
                 "clipped 1 regions that extend past their image to the image (region ids 11)",
                 "dropped 1 regions with an empty phrase (region ids 12)",
                 "dropped 1 regions whose phrase is longer than 20 characters (region ids 30)",
                 "dropped 1 regions of images that image_data.json does not list: their size is unknown (region "
                 "ids 90)"):
        assert sum(says in n for n in notes) == 1, says
    assert not any("left out" in n for n in notes[:-1])
    assert "left out 1 images of image_data.json without a usable region (image ids 3)" in notes[-1]


def test_output_reads_back_with_the_coco_readers(tmp_path: Path) -> None:
    regions, images = _files(tmp_path)
    result = convert_visual_genome(regions, images, tmp_path / "out", val_fraction=0.5, warn=False)
    for path in result.paths.values():
        checked = check_instances(path, warn=False)
        assert checked.categories == [(1, "region")] and not checked.warnings  # already clipped, nothing to drop
        captions = read_region_captions(path)
        assert captions and all(isinstance(c, str) for c in captions.values())
        coco = COCO(str(path))
        assert set(captions) == set(coco.getAnnIds())


def test_fraction_split_is_seeded(tmp_path: Path) -> None:
    image_data = [{"image_id": i, "width": 50, "height": 50} for i in range(1, 41)]
    regions = [{"id": i, "regions": [_region(100 + i, i, f"thing {i}", 1, 1, 10, 10)]} for i in range(1, 41)]
    r, i = _files(tmp_path, regions, image_data)

    def val_ids(out: str, **kwargs: Any) -> list[int]:
        result = convert_visual_genome(r, i, tmp_path / out, **kwargs)
        assert result.images["train"] + result.images["val"] == 40
        return [im["id"] for im in _load(result.paths["instances_val"])["images"]]

    default = val_ids("a")
    assert len(default) == 2  # 5% of 40
    assert val_ids("b", val_fraction=0.05, seed=0) == default
    assert len(val_ids("c", val_fraction=0.11, seed=0)) == 5  # rounded up
    assert {tuple(val_ids(f"s{seed}", val_fraction=0.25, seed=seed)) for seed in range(3)} != {tuple(default)}
    assert len({tuple(val_ids(f"s{seed}", val_fraction=0.25, seed=seed)) for seed in range(3)}) > 1
    assert val_ids("none", val_fraction=0.0) == []
    with pytest.raises(ValueError, match="not both"):
        convert_visual_genome(r, i, tmp_path / "x", val_ids=[1], val_fraction=0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        convert_visual_genome(r, i, tmp_path / "x", val_fraction=1.5)
    with pytest.warns(AnnotationWarning, match=r"2 validation image ids are not images of the converted set \(ids "
                                               r"77, 88\)"):
        convert_visual_genome(r, i, tmp_path / "x", val_ids=[3, 88, 77])


def test_v1_0_keys_and_url_file_names(tmp_path: Path) -> None:
    regions, images = _vg()
    for image in images:
        image["id"] = image.pop("image_id")  # v1.0's image_data.json
    regions[0]["image_id"] = regions[0].pop("id")
    r, i = _files(tmp_path, regions, images)
    result = convert_visual_genome(r, i, tmp_path / "out", val_ids=[], file_names="url", warn=False)
    names = [im["file_name"] for im in _load(result.paths["instances_train"])["images"]]
    assert names == ["VG_100K_2/1.jpg", "VG_100K/2.jpg", "VG_100K/3.jpg"]
    del images[1]["url"]
    r, i = _files(tmp_path, regions, images)
    with pytest.raises(ValueError, match=r"image_data.json: entry 1 \(image id 2\): field 'url' must be a non-empty"):
        convert_visual_genome(r, i, tmp_path / "out", file_names="url")


def _set(entries: list[Any], path: tuple[Any, ...], value: Any) -> None:
    """Set (or with value ... delete) entries[path[0]][path[1]]...."""
    *head, last = path
    target = entries
    for key in head:
        target = target[key]
    if value is ...:
        del target[last]
    else:
        target[last] = value


@pytest.mark.parametrize(("which", "path", "value", "says"), [
    ("regions", (0, "regions", 1, "phrase"), ..., r"region id 11 \(entry 0 \(image id 1\), regions\[1\]\): field "
                                                  r"'phrase' must be a string, got nothing \(the key is missing\)"),
    ("regions", (0, "regions", 0, "x"), "10", r"region id 10 .*field 'x' must be a finite number of pixels, got '10'"),
    ("regions", (1, "regions", 0, "height"), None, r"region id 20 .*field 'height' must be a finite number"),
    ("regions", (0, "regions", 2, "region_id"), "12", r"entry 0 \(image id 1\), regions\[2\]: field 'region_id' "
                                                      r"must be an integer"),
    ("regions", (0, "regions", 1, "region_id"), 10, r"region id 10 \(entry 0 \(image id 1\), regions\[1\]\): field "
                                                    r"'region_id' repeats the region of entry 0 \(image id 1\), "
                                                    r"regions\[0\]"),
    ("regions", (1, "regions", 0, "image_id"), 1, r"region id 20 .*field 'image_id' is 1, but the region is listed "
                                                  r"under image id 2"),
    ("regions", (1, "regions"), {"a": 1}, r"entry 1: field 'regions' must be a list of regions, got \{'a': 1\}"),
    ("regions", (1, "id"), ..., r"entry 1: field 'id' must be an integer image id"),
    ("regions", (2, "id"), 1, r"entry 2 \(image id 1\): field 'id' repeats the image id of entry 0"),
    ("regions", (0, "regions", 3), "a box", r"entry 0 \(image id 1\), regions\[3\] is a JSON str, not an object"),
    ("images", (0, "width"), ..., r"entry 0 \(image id 1\): field 'width' must be a positive number of pixels, got "
                                  r"'<missing>'"),
    ("images", (2, "height"), 0, r"entry 2 \(image id 3\): field 'height' must be a positive number"),
    ("images", (1, "image_id"), 1.0, r"entry 1: field 'image_id' \(or 'id'\) must be an integer, got 1.0"),
    ("images", (2, "image_id"), 1, r"entry 2 \(image id 1\): field 'image_id' repeats the image id of entry 0"),
    ("images", (1,), [2, 640, 480], r"entry 1 is a JSON list, not an object"),
])
def test_malformed_input_names_the_file_entry_and_field(tmp_path: Path, which: str, path: tuple[Any, ...],
                                                        value: Any, says: str) -> None:
    regions, images = _vg()
    _set(regions if which == "regions" else images, path, value)
    r, i = _files(tmp_path, regions, images)
    with pytest.raises(ValueError, match=says) as info:
        convert_visual_genome(r, i, tmp_path / "out")
    assert str(info.value).startswith(f"{r if which == 'regions' else i}: ")
    assert not (tmp_path / "out" / "annotations").exists()  # nothing written


def test_a_file_that_is_not_a_vg_list(tmp_path: Path) -> None:
    r, i = _files(tmp_path, regions={"regions": []})
    with pytest.raises(ValueError, match=r"region_descriptions.json holds a JSON dict, not a list"):
        convert_visual_genome(r, i, tmp_path / "out")
    i.write_text("[{")
    with pytest.raises(ValueError, match=r"image_data file .*image_data.json is not valid JSON"):
        convert_visual_genome(r, i, tmp_path / "out")
    with pytest.raises(ValueError, match="file_names must be"):
        convert_visual_genome(r, i, tmp_path / "out", file_names="name")  # type: ignore[arg-type]


@pytest.mark.slow
def test_tools_convert_vg(tmp_path: Path) -> None:
    r, i = _files(tmp_path)
    (tmp_path / "val.txt").write_text("2\n")
    tool = [sys.executable, str(REPO / "tools" / "convert_vg.py")]
    run = subprocess.run([*tool, "--regions", str(r), "--images", str(i), "--out", str(tmp_path / "out"),
                          "--val-ids", str(tmp_path / "val.txt"), "--max-chars", "20"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "train: 1 images, 2 regions" in run.stdout and "val: 1 images, 1 regions" in run.stdout
    assert "convert_vg.py: note:" in run.stderr and "clipped 1 regions" in run.stderr
    val = _load(tmp_path / "out" / "annotations" / "instances_val2017.json")
    assert [a["caption"] for a in val["annotations"]] == ["green tree"]

    regions, images = _vg()
    del regions[0]["regions"][0]["phrase"]
    r, i = _files(tmp_path, regions, images)
    bad = subprocess.run([*tool, "--regions", str(r), "--images", str(i), "--out", str(tmp_path / "o2")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.startswith("convert_vg.py: error: ") and "region id 10" in bad.stderr
    assert "field 'phrase'" in bad.stderr and "Traceback" not in bad.stderr
    assert "convert-vg" in help_text()  # `vitkit convert-vg` runs the same main
