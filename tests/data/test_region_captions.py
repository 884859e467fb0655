"""Region captions: the shapes generator's per-object phrases (wording, consistency with the categories and the image
captions, unchanged bytes otherwise) and the reader of ``caption`` fields."""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path
from typing import Any

import pytest

from vitkit.data.annotations import check_instances
from vitkit.data.region_captions import read_region_captions
from vitkit.data.shapes import COLORS, ensure_shapes, make_shapes

SMALL = {"num_train": 24, "num_val": 6, "seed": 0, "crowd_fraction": 0.3}
PHRASE = re.compile(r"^(a|an) (?:(small|large) )?(\w+) (\w+)$")
CROWD = re.compile(r"^a cluster of tiny (\w+) (\w+)s$")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_shapes(tmp_path_factory.mktemp("shapes"), **SMALL)


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


@pytest.mark.parametrize("split", ["train", "val"])
def test_phrases_name_each_objects_colour_shape_and_size(shapes: dict[str, Path], split: str) -> None:
    data = _load(shapes[f"instances_{split}"])
    names = {c["id"]: c["name"] for c in data["categories"]}
    sizes = {im["id"]: im["height"] * im["width"] for im in data["images"]}
    colors = {name for name, _ in COLORS}
    seen = {"crowd": 0, "small": 0, "large": 0, "": 0}
    for ann in data["annotations"]:
        caption = ann["caption"]
        if ann["iscrowd"]:
            color, kind = CROWD.match(caption).groups()
            seen["crowd"] += 1
        else:
            match = PHRASE.match(caption)
            assert match, caption
            article, size, color, kind = match.groups()
            assert article == ("an" if (size or color)[0] in "aeiou" else "a"), caption
            frac = ann["area"] / sizes[ann["image_id"]]  # the image captions' rule, on the visible area
            assert (size or "") == ("small" if frac < 0.02 else "large" if frac > 0.12 else ""), (caption, frac)
            seen[size or ""] += 1
        assert kind == names[ann["category_id"]], caption
        assert color in colors, caption
    assert all(seen.values()), seen  # every kind of phrase occurs


def test_phrases_agree_with_the_image_captions(shapes: dict[str, Path]) -> None:
    """The 'an image of ...' caption lists the objects, largest first, in exactly the words of their phrases."""
    anns = _load(shapes["instances_train"])["annotations"]
    checked = 0
    for cap in _load(shapes["captions_train"])["annotations"]:
        prefix = next((p for p in ("an image of ", "a picture of ", "a drawing of ") if cap["caption"].startswith(p)),
                      None)
        if prefix is None:
            continue
        mine = [a for a in anns if a["image_id"] == cap["image_id"]]
        objects = sorted((a for a in mine if not a["iscrowd"]), key=lambda a: -a["area"])
        crowd = [f" and {a['caption']}" for a in mine if a["iscrowd"]]
        assert cap["caption"] == prefix + _join([a["caption"] for a in objects]) + "".join(crowd)
        checked += 1
    assert checked > 3


def test_images_and_captions_are_unchanged_by_the_phrases(shapes: dict[str, Path], tmp_path: Path) -> None:
    """The phrases draw no random number: the JSON files minus the 'caption' keys hash as the generator's output did
    before phrases existed (digest taken with that code). Same seed, same bytes, images included."""
    h = hashlib.sha256()
    tiny = make_shapes(tmp_path / "tiny", num_train=10, num_val=4, seed=0, crowd_fraction=0.3)
    for key in ("captions_train", "captions_val", "instances_train", "instances_val"):
        data = _load(tiny[key])
        for ann in data["annotations"]:
            if key.startswith("instances"):
                assert list(ann)[-1] == "caption"  # the new key comes last; the others keep their order
                del ann["caption"]
        h.update(json.dumps(data).encode())
    assert h.hexdigest() == "bd267a40e972accc799eb20dfe874cf7a93e51b21c355f96cfaf715e935df35a", (
        "the shapes set changed: a change that draws more random numbers (or a Pillow/numpy upgrade that changes "
        "the drawing) gives other images and captions")
    again = make_shapes(tmp_path / "again", **SMALL)
    for path in shapes["root"].rglob("*"):
        if path.is_file():
            assert path.read_bytes() == (again["root"] / path.relative_to(shapes["root"])).read_bytes(), path


def test_ensure_shapes_leaves_a_set_it_did_not_write_alone(shapes: dict[str, Path], tmp_path: Path) -> None:
    """Without recorded generator arguments the set cannot be reproduced, so it is used as is."""
    data = _load(shapes["instances_train"])
    del data["info"]
    for ann in data["annotations"]:
        del ann["caption"]
    target = tmp_path / "mine" / "annotations" / "instances_train2017.json"
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps(data))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ensure_shapes(tmp_path / "mine", num_train=4, num_val=2)
    assert target.read_text() == json.dumps(data)
    assert not (tmp_path / "mine" / "train2017").exists()


# --------------------------------------------------------------------------------------------- the reader


def test_reader_returns_every_annotation(shapes: dict[str, Path]) -> None:
    data = _load(shapes["instances_val"])
    captions = read_region_captions(shapes["instances_val"])
    assert captions == {a["id"]: a["caption"] for a in data["annotations"]}
    check_instances(shapes["instances_val"])  # the detection checks ignore the key


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "instances_x2017.json"
    path.write_text(json.dumps(data))
    return path


def test_reader_accepts_annotations_without_caption(shapes: dict[str, Path], tmp_path: Path) -> None:
    data = _load(shapes["instances_train"])
    stripped = [a["id"] for a in data["annotations"][::3]]
    for ann in data["annotations"][::3]:
        del ann["caption"]
    captions = read_region_captions(_write(tmp_path, data))
    assert len(captions) == len(data["annotations"])
    assert [i for i, c in captions.items() if c is None] == stripped
    assert all(isinstance(c, str) for i, c in captions.items() if i not in stripped)


@pytest.mark.parametrize(("value", "says"), [
    (None, "is null"), (3, "is a JSON int"), (["a red square"], "is a JSON list"), ("", "is empty"),
    ("  \n", "is whitespace only"), ("word " * 101, "has 505 characters, more than 500"),
])
def test_reader_rejects_a_malformed_caption(shapes: dict[str, Path], tmp_path: Path, value: Any, says: str) -> None:
    data = _load(shapes["instances_train"])
    ann = data["annotations"][4]
    ann["caption"] = value
    path = _write(tmp_path, data)
    with pytest.raises(ValueError) as info:
        read_region_captions(path)
    message = str(info.value)
    assert str(path) in message
    assert f"annotation id {ann['id']} (annotations[4]): field 'caption' {says}" in message
    assert "or leave the 'caption' key out" in message  # how to fix it


def test_reader_counts_annotations_that_share_a_problem(shapes: dict[str, Path], tmp_path: Path) -> None:
    data = _load(shapes["instances_train"])
    for ann in data["annotations"][2:5]:
        ann["caption"] = " "
    data["annotations"][7]["caption"] = 7
    with pytest.raises(ValueError, match=r"whitespace only.*\(3 entries have this problem: 3, 4, 5\).*other problems "
                                         r"too: annotations whose 'caption' is not a string"):
        read_region_captions(_write(tmp_path, data))


def test_reader_length_limit_is_a_parameter(shapes: dict[str, Path], tmp_path: Path) -> None:
    path = _write(tmp_path, _load(shapes["instances_train"]))
    with pytest.raises(ValueError, match="more than 12"):
        read_region_captions(path, max_chars=12)
    assert read_region_captions(path, max_chars=40)


@pytest.mark.parametrize(("change", "says"), [
    (lambda anns: anns[3].pop("id"), r"annotations\[3\] has no field 'id'"),
    (lambda anns: anns[3].update(id=anns[1]["id"]), r"annotation id 2 appears twice \(annotations\[1\] and "
                                                    r"annotations\[3\]\), field 'id'"),
])
def test_reader_needs_unique_annotation_ids(shapes: dict[str, Path], tmp_path: Path, change: Any, says: str) -> None:
    data = _load(shapes["instances_train"])
    change(data["annotations"])
    with pytest.raises(ValueError, match=says):
        read_region_captions(_write(tmp_path, data))


def test_reader_rejects_a_file_that_is_not_an_instances_file(tmp_path: Path) -> None:
    path = tmp_path / "instances_x2017.json"
    path.write_text("[1, 2")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_region_captions(path)
    path.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(ValueError, match="no 'categories' list"):
        read_region_captions(path)
