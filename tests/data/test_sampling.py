"""Aspect-ratio grouped batches (vitkit.data.sampling) and the image sizes the COCO-layout datasets give them."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image
from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler

from vitkit.captioning.datamodule import CaptionDataModule
from vitkit.data.bad_images import find_wrapped
from vitkit.data.coco_captions import CocoCaptions
from vitkit.data.collate import pad_images
from vitkit.data.images import image_size
from vitkit.data.sampling import GroupedBatchSampler, aspect_ratio_groups
from vitkit.data.shapes import make_shapes
from vitkit.training.guards import ConfigError


def test_groups_split_orientations_and_bin_by_factor():
    ratios = [0.4, 0.7, 0.95, 1.0, 1.1, 1.5, 3.0]
    assert aspect_ratio_groups(ratios, 1) == [0, 1, 1, 2, 2, 2, 3]  # edges 0.5, 1, 2
    fine = aspect_ratio_groups(ratios, 3)  # edges 2^(k/3): 0.5, 0.63, 0.79, 1, 1.26, 1.59, 2
    assert fine == [0, 2, 3, 4, 4, 5, 7]
    assert len(set(aspect_ratio_groups([0.75, 1.33], 3))) == 2  # portrait and landscape never share a group


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_groups_refuse_a_ratio_that_is_no_positive_number(bad):
    with pytest.raises(ValueError, match="item 1 has aspect ratio"):
        aspect_ratio_groups([1.0, bad], 3)
    with pytest.raises(ValueError, match="factor must be >= 1"):
        aspect_ratio_groups([1.0], 0)


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("n", [37, 40])
def test_every_item_once_and_as_many_batches_as_plain_batching(n, drop_last):
    groups = [(i * 7) % 3 for i in range(n)]
    sampler = RandomSampler(range(n), generator=torch.Generator().manual_seed(n))
    batches = list(GroupedBatchSampler(sampler, 4, drop_last, groups))
    plain = BatchSampler(range(n), 4, drop_last)
    assert len(batches) == len(plain) == len(GroupedBatchSampler(sampler, 4, drop_last, groups))
    seen = [i for b in batches for i in b]
    assert len(seen) == len(set(seen))
    if drop_last:
        assert all(len(b) == 4 for b in batches)
    else:
        assert sorted(seen) == list(range(n))
    mixed = [b for b in batches if len({groups[i] for i in b}) > 1]
    assert len(mixed) <= 2  # only the end-of-epoch leftovers (< 4 per group, 3 groups) may mix
    assert all(b in batches[-len(mixed):] for b in mixed)


def test_batches_follow_the_sampler_order_within_a_group():
    groups = [0, 1, 0, 1, 0, 1, 0, 1]
    order = [7, 6, 5, 4, 3, 2, 1, 0]
    assert list(GroupedBatchSampler(order, 2, False, groups)) == [[7, 5], [6, 4], [3, 1], [2, 0]]
    # leftovers [1] (group 1) and [0] (group 0) share the last batch, in group order
    assert list(GroupedBatchSampler(order, 3, False, groups)) == [[7, 5, 3], [6, 4, 2], [0, 1]]
    with pytest.raises(ValueError, match="group_ids"):
        GroupedBatchSampler(order, 2, False, [])


def test_grouping_cuts_the_padding_of_mixed_orientations():
    torch.manual_seed(0)
    sizes = [(192, 256), (256, 192)] * 16  # (H, W): portrait and landscape, as the shapes set's resized images
    groups = aspect_ratio_groups([w / h for h, w in sizes], 3)

    def padded_pixels(batches) -> int:
        return sum(pad_images([torch.zeros(1, *sizes[i]) for i in b], 16)[0][:, 0].numel() for b in batches)

    sampler = RandomSampler(sizes, generator=torch.Generator().manual_seed(0))
    plain = padded_pixels(BatchSampler(sampler, 8, False))
    grouped = padded_pixels(GroupedBatchSampler(sampler, 8, False, groups))
    assert grouped == 32 * 192 * 256 < 0.8 * plain  # no padding left; random batches pad to 256 x 256


def _caption_set(root, sizes: dict[int, tuple[int, int] | None]) -> None:
    (root / "train2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, anns = [], []
    for i, (w, h) in enumerate([(60, 40), (40, 60), (50, 50)], 1):
        Image.new("RGB", (w, h)).save(root / "train2017" / f"{i}.png")
        entry = {"id": i, "file_name": f"{i}.png"}
        if sizes.get(i) is not None:
            entry["width"], entry["height"] = sizes[i]
        images.append(entry)
        anns.append({"id": i, "image_id": i, "caption": "a shape"})
    (root / "annotations" / "captions_train2017.json").write_text(json.dumps({"images": images, "annotations": anns}))


def test_caption_set_ratios_come_from_the_file_or_else_the_image_header(tmp_path):
    _caption_set(tmp_path, {1: (60, 40), 2: None, 3: (100, 50)})  # 3: the file's size wins over the pixels
    ds = CocoCaptions(tmp_path, "train")
    assert ds.annotated_size(0) == (60, 40) and ds.annotated_size(1) is None  # items 0, 1: image ids 1, 2
    assert ds.aspect_ratios() == pytest.approx([1.5, 40 / 60, 2.0])


def test_image_size_reads_the_header_upright(tmp_path):
    path = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated a quarter turn
    Image.new("RGB", (64, 32)).save(path, exif=exif)
    assert image_size(path) == (32, 64)
    (tmp_path / "junk.png").write_bytes(b"not an image")
    assert image_size(tmp_path / "junk.png") is None
    assert image_size(tmp_path / "missing.png") is None


def test_sequential_validation_batches_are_grouped_in_file_order():
    groups = [0, 1, 0, 1, 0]
    assert list(GroupedBatchSampler(SequentialSampler(range(5)), 2, False, groups)) == [[0, 2], [1, 3], [4]]


def test_datamodule_batches_one_orientation_at_a_time(tmp_path):
    root = make_shapes(tmp_path, num_train=24, num_val=4, image_size=96, seed=0)["root"]
    dm = CaptionDataModule(root=str(root), batch_size=4, train_size=64, val_size=64, max_size=128, num_workers=0,
                           vocab_size=200, aspect_ratio_groups=3)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader.batch_sampler, GroupedBatchSampler)
    ratios = find_wrapped(dm.train_set, lambda d: hasattr(d, "aspect_ratios")).aspect_ratios()
    assert len(ratios) == 24 and min(ratios) < 1 < max(ratios)  # the generated set mixes orientations
    groups = aspect_ratio_groups(ratios, 3)
    torch.manual_seed(0)
    batches = list(loader.batch_sampler)
    mixed = [b for b in batches if len({groups[i] for i in b}) > 1]
    assert len(batches) == 6 and len(mixed) <= 3
    images = next(iter(loader))[0]
    assert images.shape[0] == 4
    with pytest.raises(ConfigError, match=r"data\.aspect_ratio_groups must be >= 0"):
        CaptionDataModule(root=str(root), aspect_ratio_groups=-1)
