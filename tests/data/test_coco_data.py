"""CocoDetection (label mapping, crowd, empty images, box conversion, errors, EXIF) and detection collation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.ops import box_convert

from vitkit.data import CocoDetection, collate_detection, detr_train_transforms, detr_val_transforms, make_shapes

SMALL_TRAIN = {"scales": (160, 176, 192), "max_size": 320, "crop": (96, 160), "resize_before_crop": (128, 160)}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("coco"), num_train=20, num_val=8, seed=0)["root"]


def _json(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"instances_{split}2017.json").read_text())


def test_label_mapping_round_trips(root: Path) -> None:
    ds = CocoDetection(root, "train")
    assert ds.num_classes == 4
    assert ds.cat_ids == [1, 3, 7, 9]
    assert ds.class_names == ["square", "circle", "triangle", "star"]
    assert ds.label_to_cat_id == {0: 1, 1: 3, 2: 7, 3: 9}
    assert all(ds.label_to_cat_id[ds.cat_id_to_label[c]] == c for c in ds.cat_ids)
    # the labels of every sample map back to the annotation file's category ids
    data = _json(root, "train")
    for i in range(len(ds)):
        _, target = ds[i]
        expected = [a["category_id"] for a in data["annotations"] if a["image_id"] == target["image_id"]
                    and not a["iscrowd"]]
        assert [ds.label_to_cat_id[int(l)] for l in target["labels"]] == expected


def test_boxes_match_json_and_crowd_is_excluded(root: Path) -> None:
    ds = CocoDetection(root, "val")
    data = _json(root, "val")
    images = {im["id"]: im for im in data["images"]}
    assert len(ds) == len(images)
    seen_crowd = False
    for i in range(len(ds)):
        image, target = ds[i]
        info = images[target["image_id"]]
        h, w = info["height"], info["width"]
        assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8 and image.shape == (3, h, w)
        assert target["orig_size"].tolist() == [h, w] == target["size"].tolist()
        anns = [a for a in data["annotations"] if a["image_id"] == info["id"]]
        seen_crowd |= any(a["iscrowd"] for a in anns)
        expected = torch.tensor([a["bbox"] for a in anns if not a["iscrowd"]], dtype=torch.float32).reshape(-1, 4)
        boxes = target["boxes"]
        assert type(boxes) is torch.Tensor and boxes.dtype == torch.float32
        assert boxes.shape == expected.shape and target["labels"].shape == (len(expected),)
        assert ((boxes >= 0) & (boxes <= 1)).all()
        xywh = box_convert(boxes * torch.tensor([w, h, w, h]), "cxcywh", "xywh")
        torch.testing.assert_close(xywh, expected, atol=1e-4, rtol=0)
    assert seen_crowd


def test_empty_image_gives_empty_targets(root: Path) -> None:
    data = _json(root, "train")
    with_anns = {a["image_id"] for a in data["annotations"]}
    empty_ids = [im["id"] for im in data["images"] if im["id"] not in with_anns]
    assert empty_ids
    for transforms in (None, detr_train_transforms(**SMALL_TRAIN), detr_val_transforms(192, 320)):
        ds = CocoDetection(root, "train", transforms=transforms)
        image, target = ds[ds.ids.index(empty_ids[0])]
        assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
        assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64
        assert target["size"].tolist() == list(image.shape[-2:])


def test_transformed_samples_follow_the_contract(root: Path) -> None:
    ds = CocoDetection(root, "train", transforms=detr_train_transforms(**SMALL_TRAIN))
    torch.manual_seed(0)
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.dtype == torch.float32 and image.shape[0] == 3
        assert target["size"].tolist() == list(image.shape[-2:])
        assert min(image.shape[-2:]) in SMALL_TRAIN["scales"] or max(image.shape[-2:]) == SMALL_TRAIN["max_size"]
        n = len(target["labels"])
        assert target["boxes"].shape == (n, 4) and ((target["boxes"] >= 0) & (target["boxes"] <= 1)).all()
        assert (target["boxes"][:, 2:] > 0).all()
        assert set(target["labels"].tolist()) <= set(range(ds.num_classes))
    val = CocoDetection(root, "val", transforms=detr_val_transforms(192, 320))
    image, target = val[0]
    assert min(image.shape[-2:]) == 192 and target["orig_size"].tolist() != target["size"].tolist()


def test_missing_paths_raise_with_layout(tmp_path: Path, root: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        CocoDetection(tmp_path / "nowhere", "train")
    msg = str(err.value)
    assert str(tmp_path / "nowhere" / "annotations" / "instances_train2017.json") in msg
    assert "train2017" in msg and "val2017" in msg and "cocodataset.org" in msg

    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text(
        (root / "annotations" / "instances_val2017.json").read_text())
    with pytest.raises(FileNotFoundError, match="image folder") as err:
        CocoDetection(tmp_path, "val")
    assert str(tmp_path / "val2017") in str(err.value)


def _one_image_dataset(tmp_path: Path, json_size: tuple[int, int], orientation: int) -> CocoDetection:
    """A 1-image dataset: stored pixels 40 (h) x 60 (w) with an EXIF orientation tag; json gives (h, w)."""
    (tmp_path / "annotations").mkdir(parents=True)
    (tmp_path / "x2017").mkdir()
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.new("RGB", (60, 40), (200, 10, 10)).save(tmp_path / "x2017" / "a.jpg", exif=exif.tobytes())
    h, w = json_size
    data = {"images": [{"id": 5, "file_name": "a.jpg", "height": h, "width": w}],
            "annotations": [{"id": 1, "image_id": 5, "category_id": 2, "bbox": [1.0, 2.0, 10.0, 5.0], "area": 50.0,
                             "iscrowd": 0}],
            "categories": [{"id": 2, "name": "thing", "supercategory": "x"}]}
    (tmp_path / "annotations" / "instances_x2017.json").write_text(json.dumps(data))
    return CocoDetection(tmp_path, "x")


def test_exif_orientation(tmp_path: Path) -> None:
    # orientation 6 (rotate 90 on display): annotated in display orientation -> decoded transposed
    image, target = _one_image_dataset(tmp_path / "a", (60, 40), 6)[0]
    assert image.shape == (3, 60, 40) and target["orig_size"].tolist() == [60, 40]
    # annotated in stored pixel order (json size = raw size) -> left as stored
    image, target = _one_image_dataset(tmp_path / "b", (40, 60), 6)[0]
    assert image.shape == (3, 40, 60)
    torch.testing.assert_close(target["boxes"], torch.tensor([[6 / 60, 4.5 / 40, 10 / 60, 5 / 40]]))


def test_collate_pads_and_masks() -> None:
    a = torch.arange(1, 3 * 5 * 7 + 1, dtype=torch.float32).reshape(3, 5, 7)
    b = torch.full((3, 8, 4), 2.0)
    ta, tb = {"image_id": 1}, {"image_id": 2}
    images, mask, targets = collate_detection([(a, ta), (b, tb)])
    assert images.shape == (2, 3, 8, 7) and mask.shape == (2, 8, 7) and mask.dtype == torch.bool
    assert targets[0] is ta and targets[1] is tb
    torch.testing.assert_close(images[0, :, :5, :7], a)
    torch.testing.assert_close(images[1, :, :8, :4], b)
    assert images[0, :, 5:].abs().sum() == 0 and images[1, :, :, 4:].abs().sum() == 0
    assert not mask[0, :5, :7].any() and mask[0, 5:].all() and mask[0, :, 7:].all()
    assert not mask[1, :8, :4].any() and mask[1, :, 4:].all()

    images, mask, _ = collate_detection([(a, ta), (b, tb)], pad_to_multiple=32)
    assert images.shape == (2, 3, 32, 32) and mask.shape == (2, 32, 32)
    assert (~mask).sum(dim=(1, 2)).tolist() == [35, 32]
    assert (~mask[1]).nonzero().max(dim=0).values.tolist() == [7, 3]

    u8 = tv_tensors.Image(torch.ones(3, 2, 2, dtype=torch.uint8))
    images, _, _ = collate_detection([(u8, {})])
    assert type(images) is torch.Tensor and images.dtype == torch.uint8
    with pytest.raises(ValueError, match="same C and dtype"):
        collate_detection([(a, ta), (u8, {})])


def test_collate_real_batch(root: Path) -> None:
    ds = CocoDetection(root, "val", transforms=detr_val_transforms(192, 320))
    batch = [ds[i] for i in range(4)]
    images, mask, targets = collate_detection(batch, pad_to_multiple=16)
    assert images.shape[-2] % 16 == 0 and images.shape[-1] % 16 == 0
    for i, (image, target) in enumerate(batch):
        h, w = target["size"].tolist()
        assert int((~mask[i]).sum()) == h * w
        torch.testing.assert_close(images[i, :, :h, :w], image.as_subclass(torch.Tensor))
        assert targets[i] is target


def test_datamodule_crop_p_zero_never_crops(root: Path) -> None:
    from vitkit.detection.datamodule import CocoDataModule

    dm = CocoDataModule(root=str(root), train_scales=[160], train_max_size=400, crop_resize=[128],
                        crop_size=(64, 96), crop_p=0.0, num_workers=0)
    dm.setup("fit")
    torch.manual_seed(0)
    data = _json(root, "train")
    for i in range(len(dm.train_set)):
        _, target = dm.train_set[i]
        info = next(im for im in data["images"] if im["id"] == int(target["image_id"]))
        n_json = sum(1 for a in data["annotations"] if a["image_id"] == info["id"] and not a.get("iscrowd", 0))
        assert len(target["labels"]) == n_json  # no crop (to 64..96 px of 128), so every object is kept
