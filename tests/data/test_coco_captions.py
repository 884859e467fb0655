"""CocoCaptions on a tiny generated shapes set: eval and train items, random references, transforms, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.transforms import v2

from vitkit.data.coco_captions import CocoCaptions
from vitkit.data.images import ImageReadError
from vitkit.data.shapes import make_shapes

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("coco"), num_train=6, num_val=3, image_size=96, seed=0)["root"]


def _captions_json(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"captions_{split}2017.json").read_text())


def _collate(batch: list) -> list[str]:
    return [caption for _, caption, _ in batch]


def test_eval_items_hold_every_reference(root: Path) -> None:
    data = _captions_json(root, "val")
    ds = CocoCaptions(root, "val")
    assert not ds.train and len(ds) == 3
    for index in range(len(ds)):
        image, refs, image_id = ds[index]
        info = next(img for img in data["images"] if img["id"] == image_id)
        assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8
        assert image.shape == (3, info["height"], info["width"])
        assert refs == [a["caption"] for a in data["annotations"] if a["image_id"] == image_id]
        assert len(refs) == 5
    assert ds.ids == sorted(img["id"] for img in data["images"])
    assert ds.references == {i: ds[k][1] for k, i in enumerate(ds.ids)}


def test_train_items_draw_one_reference_reproducibly(root: Path) -> None:
    ds = CocoCaptions(root, "train", transforms=v2.Resize((32, 48), antialias=True))
    assert ds.train and len(ds) == 6
    image, caption, image_id = ds[0]
    refs = ds.references[ds.ids[0]]
    assert image.shape == (3, 32, 48) and caption in refs and image_id == ds.ids[0]  # ids reach the batch (issue 7)
    torch.manual_seed(0)
    drawn = [ds[0][1] for _ in range(25)]
    assert set(drawn) <= set(refs) and len(set(drawn)) >= 3  # one random reference per access
    torch.manual_seed(0)
    assert [ds[0][1] for _ in range(25)] == drawn

    def epoch() -> list[str]:
        loader = DataLoader(ds, batch_size=3, shuffle=True, num_workers=2, collate_fn=_collate)
        return [c for batch in loader for c in batch]

    torch.manual_seed(1)
    first = epoch()
    torch.manual_seed(1)
    assert epoch() == first  # workers are seeded from the main generator
    assert all(any(c in refs for refs in ds.references.values()) for c in first)


def test_train_flag_overrides_split(root: Path) -> None:
    assert isinstance(CocoCaptions(root, "val", train=True)[0][1], str)  # (image, caption, image_id)
    assert isinstance(CocoCaptions(root, "train", train=False)[0][1], list)  # (image, references, image_id)


def test_layout_and_file_errors(root: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"caption file not found: .*captions_test2017\.json.*COCO 2017 layout"):
        CocoCaptions(root, "test")
    with pytest.raises(FileNotFoundError, match=r"image folder not found: .*nowhere"):
        CocoCaptions(root, "val", img_folder=root / "nowhere")

    def ann(name: str, obj: object) -> Path:
        path = tmp_path / name
        path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
        return path

    with pytest.raises(ValueError, match=r"bad\.json is not valid JSON"):
        CocoCaptions(root, "val", ann_file=ann("bad.json", "{oops"))
    with pytest.raises(ValueError, match=r"noann\.json has no 'annotations' list"):
        CocoCaptions(root, "val", ann_file=ann("noann.json", {"images": []}))
    instances = root / "annotations" / "instances_val2017.json"
    with pytest.raises(ValueError, match=r"annotations\[0\] needs 'image_id' and 'caption'.*instances"):
        CocoCaptions(root, "val", ann_file=instances)
    data = _captions_json(root, "val")
    stray = {**data, "annotations": [*data["annotations"], {"id": 999, "image_id": 12345, "caption": "x"}]}
    with pytest.raises(ValueError, match=r"image id 12345, which is not in 'images'"):
        CocoCaptions(root, "val", ann_file=ann("stray.json", stray))

    first_id = data["images"][0]["id"]
    partial = {**data, "annotations": [a for a in data["annotations"] if a["image_id"] != first_id]}
    with pytest.warns(UserWarning, match=rf"1 image\(s\) have no caption and are left out, e.g. ids \[{first_id}\]"):
        ds = CocoCaptions(root, "val", ann_file=ann("partial.json", partial))
    assert first_id not in ds.ids and len(ds) == 2

    missing = {**data, "images": [{**img, "file_name": "gone.jpg"} for img in data["images"]]}
    with pytest.raises(ImageReadError, match=r"gone\.jpg"):  # found at construction, not when read
        CocoCaptions(root, "val", ann_file=ann("missing.json", missing))
