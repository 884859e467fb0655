"""The captioner's object-token loss (issue 16): token labels from boxes, the data path that carries the boxes
through resizing and mirroring, the module's switch, and that the head learns which tokens hold which object."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.captioning import Captioner
from vitkit.captioning.datamodule import CaptionDataModule
from vitkit.captioning.module import CaptionModule
from vitkit.captioning.object_tokens import IGNORE, ObjectTokenHead, mirror_objects, token_targets
from vitkit.core import TransformerDecoder, ViTEncoder
from vitkit.training.guards import ConfigError

I = IGNORE


def test_token_targets_hand_case():
    # A batch padded to 32 x 48 px, grid 2 x 3 (16 px tokens, centres at x 8/24/40, y 8/24).
    mask = torch.ones(3, 32, 48, dtype=torch.bool)
    mask[0] = False  # image 0 fills the frame
    mask[1, :16, :32] = False  # image 1 is 16 x 32: only the top row's first two tokens are image
    mask[2, :, :] = False
    objects = [
        # a big box over the left two columns (label 1) and a small one inside it around token (0, 0) (label 2)
        {"boxes": torch.tensor([[0.0, 0.0, 0.66, 1.0], [0.0, 0.0, 0.25, 0.4]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.tensor([[0.5, 0.0, 1.0, 1.0]]), "labels": torch.tensor([0])},  # right half of 32 px: x 16-32
        None,  # an image the instances file does not list
    ]
    got = token_targets(objects, (2, 3), mask, background=4)
    assert got.tolist() == [[2, 1, 4, 1, 1, 4],
                            [4, 0, I, I, I, I],
                            [I, I, I, I, I, I]]


def test_mirrored_objects_give_mirrored_targets():
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(5, 2, generator=gen) * 0.6
    boxes = torch.cat((xy, xy + 0.1 + torch.rand(5, 2, generator=gen) * 0.3), dim=1)
    objects = {"boxes": boxes, "labels": torch.arange(5)}
    mask = torch.zeros(1, 64, 96, dtype=torch.bool)
    plain = token_targets([objects], (8, 12), mask, 5).view(8, 12)
    mirrored = token_targets([mirror_objects(objects)], (8, 12), mask, 5).view(8, 12)
    assert (plain != 5).any()
    assert torch.equal(mirrored, plain.flip(-1))
    assert torch.allclose(mirror_objects(mirror_objects(objects))["boxes"], boxes)


def _tiny_captioner(vocab: int = 20) -> Captioner:
    encoder = ViTEncoder(patch_size=8, embed_dim=32, depth=1, num_heads=2, pos_embed="sine", class_token=False)
    decoder = TransformerDecoder(dim=32, depth=1, num_heads=2, return_intermediate=False)
    return Captioner(encoder, decoder, vocab_size=vocab, max_length=8)


def test_object_weight_needs_object_labels():
    with pytest.raises(ConfigError, match=r"data\.object_labels"):
        CaptionModule(_tiny_captioner(), object_weight=1.0)
    assert CaptionModule(_tiny_captioner(), object_classes=3).object_head is None  # weight 0: no head


def test_training_step_adds_the_object_loss_and_trains_the_head():
    torch.manual_seed(0)
    module = CaptionModule(_tiny_captioner(), object_classes=2, object_weight=1.0)
    images, mask = torch.randn(2, 3, 32, 32), torch.zeros(2, 32, 32, dtype=torch.bool)
    tokens = torch.tensor([[1, 5, 6, 2, 0], [1, 7, 2, 0, 0]])
    objects = [{"boxes": torch.tensor([[0.0, 0.0, 0.5, 0.5]]), "labels": torch.tensor([1])}, None]
    module.log = lambda *a, **k: None
    with_objects = module.training_step((images, mask, tokens, [1, 2], objects), 0)
    alone = module.captioner.loss(module.captioner(images, tokens, mask), tokens)
    assert with_objects > alone
    with_objects.backward()
    assert module.object_head.proj.weight.grad.abs().sum() > 0
    with pytest.raises(RuntimeError, match="object_labels"):
        module.training_step((images, mask, tokens, [1, 2]), 0)


def test_scst_steps_keep_the_unused_head_in_the_graph(monkeypatch):
    """DDP (find_unused_parameters=False) waits for a gradient of every parameter, SCST steps included."""
    module = CaptionModule(_tiny_captioner(), object_classes=2, object_weight=1.0)
    monkeypatch.setattr(CaptionModule, "scst_active", property(lambda self: True))
    monkeypatch.setattr(module, "_scst_loss", lambda images, mask, ids: module.captioner(images, tokens, mask).mean())
    module.log = lambda *a, **k: None
    images, mask = torch.randn(1, 3, 32, 32), torch.zeros(1, 32, 32, dtype=torch.bool)
    tokens = torch.tensor([[1, 5, 2]])
    module.training_step((images, mask, tokens, [1], [None]), 0).backward()
    assert all(p.grad is not None and not p.grad.any() for p in module.object_head.parameters())


def test_head_learns_which_tokens_hold_which_object():
    """Bright squares (label 0) and dark ones (label 1) on grey: after 60 steps the tokens are labelled right."""
    torch.manual_seed(0)
    gen = np.random.default_rng(0)
    images, objects = torch.zeros(8, 3, 32, 32), []
    for b in range(8):
        x, y = (int(v) for v in gen.integers(0, 16, size=2))
        label = b % 2
        images[b, :, y:y + 16, x:x + 16] = 1.0 if label == 0 else -1.0
        objects.append({"boxes": torch.tensor([[x, y, x + 16, y + 16]]) / 32.0, "labels": torch.tensor([label])})
    mask = torch.zeros(8, 32, 32, dtype=torch.bool)
    encoder = ViTEncoder(patch_size=8, embed_dim=32, depth=1, num_heads=2, pos_embed="sine", class_token=False)
    head = ObjectTokenHead(32, 2)
    opt = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=3e-3)
    for _ in range(60):
        enc = encoder(images, mask)
        loss = head.loss(enc.tokens, 0, enc.grid, mask, objects)
        opt.zero_grad()
        loss.backward()
        opt.step()
    enc = encoder(images, mask)
    target = token_targets(objects, enc.grid, mask, 2)
    accuracy = (head(enc.tokens).argmax(-1) == target).float().mean()
    assert accuracy > 0.95


def _write_set(root, n: int = 4) -> None:
    """n images, each with one square; captions and instances files in the COCO layout (train and val alike)."""
    images, captions, instances = [], [], []
    for split in ("train", "val"):
        (root / f"{split}2017").mkdir(parents=True)
    for i in range(1, n + 1):
        h, w = 60 + 10 * i, 80
        pixels = np.full((h, w, 3), 128, np.uint8)
        pixels[10:30, 40:70] = (230, 30, 30)
        for split in ("train", "val"):
            Image.fromarray(pixels).save(root / f"{split}2017" / f"{i:012d}.png")
        images.append({"id": i, "file_name": f"{i:012d}.png", "height": h, "width": w})
        captions.append({"id": i, "image_id": i, "caption": "a red square"})
        instances.append({"id": i, "image_id": i, "category_id": 7, "bbox": [40, 10, 30, 20], "area": 600,
                          "iscrowd": 0})
    (root / "annotations").mkdir()
    cats = [{"id": 3, "name": "circle"}, {"id": 7, "name": "square"}]
    for split in ("train", "val"):
        ann = root / "annotations"
        (ann / f"captions_{split}2017.json").write_text(json.dumps({"images": images, "annotations": captions}))
        (ann / f"instances_{split}2017.json").write_text(json.dumps(
            {"images": images, "annotations": instances, "categories": cats}))


def _datamodule(root, **kw) -> CaptionDataModule:
    return CaptionDataModule(root=str(root), batch_size=4, train_size=[48, 96], val_size=64, max_size=160,
                             num_workers=0, pad_to_multiple=16, **kw)


def test_datamodule_carries_boxes_through_resize_and_mirror(tmp_path):
    _write_set(tmp_path)
    dm = _datamodule(tmp_path, object_labels=True, hflip_p=0.5)
    assert dm.num_object_classes == 2
    dm.setup("fit")
    torch.manual_seed(0)
    flips = set()
    for _ in range(3):
        images, mask, _, _, objects = next(iter(dm.train_dataloader()))
        targets = token_targets(objects, (images.shape[2] // 16, images.shape[3] // 16), mask, 2)
        for b, obj in enumerate(objects):
            assert obj["labels"].tolist() == [1]  # category 7 is the second category
            x0 = float(obj["boxes"][0, 0])
            flips.add(round(x0, 3))
            # the red square's pixels sit inside the (resized, maybe mirrored) box
            red = (images[b, 0] > 1.5) & (images[b, 1] < 0)  # (H, W) normalised red
            xs = red.nonzero(as_tuple=True)[1]
            w = float((~mask[b, 0]).sum())
            assert x0 * w - 1 <= float(xs.min()) and float(xs.max()) <= float(obj["boxes"][0, 2]) * w + 1
        assert (targets == 1).any()
    assert flips == {0.5, 1 - 70 / 80}  # both the plain and the mirrored box were drawn


def test_datamodule_without_object_labels_gives_four_elements(tmp_path):
    _write_set(tmp_path)
    dm = _datamodule(tmp_path)
    dm.setup("fit")
    assert dm.num_object_classes is None
    assert len(next(iter(dm.train_dataloader()))) == 4


def test_missing_instances_file_is_named(tmp_path):
    _write_set(tmp_path)
    (tmp_path / "annotations" / "instances_train2017.json").unlink()
    with pytest.raises(ConfigError, match=r"instances_train2017\.json.*data\.object_labels"):
        _ = _datamodule(tmp_path, object_labels=True).num_object_classes
