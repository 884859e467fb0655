"""Image captions grounded in the detector's objects (DenseModule's image_decoder): the head's memory, the data path's
image captions, SCST on given memory, and a learning test in which the caption must name the objects' order."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from vitkit.captioning import Captioner
from vitkit.captioning.scst import scst_memory_step, scst_step
from vitkit.core import TransformerDecoder, ViTEncoder
from vitkit.data import make_shapes
from vitkit.describe.datamodule import DenseDataModule
from vitkit.describe.image_head import ImageCaptionHead, image_captioner
from vitkit.describe.module import DenseModule
from vitkit.detection import DETR
from vitkit.train.guards import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

PAD, BOS, EOS = 0, 1, 2
RED, BLUE, SQUARE = 3, 4, 5
COLOURS = {RED: (2.0, -1.0, -1.0), BLUE: (-1.0, -1.0, 2.0)}


def _scene(g: torch.Generator) -> tuple[torch.Tensor, dict]:
    """A 64 x 64 image with a red and a blue 16-px square side by side in random order; its image caption names
    them left to right ("red square blue square" or "blue square red square")."""
    x = 0.2 * torch.randn(3, 64, 64, generator=g)
    order = [RED, BLUE] if bool(torch.rand(1, generator=g) > 0.5) else [BLUE, RED]
    boxes, labels = [], []
    for k, colour in enumerate(order):
        x0 = 32 * k + int(torch.randint(0, 16, (1,), generator=g))
        y0 = int(torch.randint(0, 48, (1,), generator=g))
        x[:, y0:y0 + 16, x0:x0 + 16] = torch.tensor(COLOURS[colour])[:, None, None]
        boxes.append([(x0 + 8) / 64, (y0 + 8) / 64, 16 / 64, 16 / 64])
        labels.append(colour - RED)
    caption = torch.tensor([BOS, order[0], SQUARE, order[1], SQUARE, EOS])
    target = {"labels": torch.tensor(labels), "boxes": torch.tensor(boxes), "image_id": torch.tensor(0),
              "caption_tokens": torch.zeros(2, 2, dtype=torch.long), "has_caption": torch.zeros(2, dtype=torch.bool),
              "image_caption_tokens": caption}
    return x, target


def _batches(n: int, batch: int, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        scenes = [_scene(g) for _ in range(batch)]
        out.append((torch.stack([s[0] for s in scenes]), torch.zeros(batch, 64, 64, dtype=torch.bool),
                    [s[1] for s in scenes]))
    return out


def _same(batch):
    return batch


def _detector() -> DETR:
    enc = ViTEncoder(patch_size=16, embed_dim=48, depth=1, num_heads=4, pos_embed="rope", class_token=False,
                     stem_channels=[16, 32, 48, 48])
    return DETR(enc, TransformerDecoder(dim=48, depth=2, num_heads=4), num_classes=2, num_queries=6,
                sigmoid_head=True, box_refine=True, two_stage=True)


def _text(dim: int = 32) -> Captioner:
    return Captioner(None, TransformerDecoder(dim=dim, depth=1, num_heads=2, return_intermediate=False),
                     vocab_size=6, max_length=8)


def test_image_captioner_shares_the_region_vocabulary_and_settings():
    text = _text()
    cap = image_captioner(text, TransformerDecoder(dim=40, depth=2, num_heads=4, return_intermediate=False))
    assert (cap.vocab_size, cap.max_length, cap.pad_id, cap.bos_id, cap.eos_id) == (6, 8, PAD, BOS, EOS)
    assert cap.encoder is None and cap.decoder.dim == 40 and cap.lm_head.weight is cap.token_embed.weight
    with pytest.raises(ValueError, match="encoder=None"):
        ImageCaptionHead(48, 2, Captioner(ViTEncoder(patch_size=16, embed_dim=32, depth=1, num_heads=2),
                                          TransformerDecoder(dim=32, depth=1, num_heads=2, return_intermediate=False),
                                          vocab_size=6))


def test_memory_holds_the_grid_and_the_top_objects_with_gradients_only_through_states():
    torch.manual_seed(0)
    head = ImageCaptionHead(48, 2, _text(), num_objects=2)
    B, Q, h, w = 2, 5, 3, 4
    grid_mask = torch.zeros(B, h, w, dtype=torch.bool)
    grid_mask[1, :, 3:] = True  # the second image is narrower
    hidden = torch.randn(B, Q, 48, requires_grad=True)
    boxes = torch.rand(B, Q, 4, requires_grad=True)
    probs = torch.rand(B, Q, 2)
    probs[0, 3], probs[1, 0] = 5.0, 5.0  # each image's best query
    outputs = {"grid": torch.randn(B, 48, h, w), "grid_mask": grid_mask, "hidden": hidden, "pred_boxes": boxes}
    memory, mask, pos = head.memory(outputs, probs)
    assert memory.shape == (B, h * w + 2, 32) and pos.shape == memory.shape
    assert mask.tolist()[1][:h * w] == grid_mask[1].flatten().tolist() and not mask[:, h * w:].any()
    memory[:, h * w].sum().backward()  # the first object slot of each image: its best query
    assert hidden.grad[0, 3].abs().sum() > 0 and hidden.grad[1, 0].abs().sum() > 0
    assert hidden.grad[0, :3].abs().sum() == 0 and boxes.grad is None


def test_scst_on_given_memory_is_scst_on_the_captioner_encoding():
    torch.manual_seed(0)
    enc = ViTEncoder(patch_size=16, embed_dim=32, depth=1, num_heads=2, class_token=False)
    cap = Captioner(enc, TransformerDecoder(dim=32, depth=1, num_heads=2, return_intermediate=False), vocab_size=6,
                    max_length=6).eval()
    images = torch.randn(2, 3, 32, 32)

    def reward(ids, keys):  # longer captions score more
        return (ids != PAD).sum(1).float().numpy()

    torch.manual_seed(1)
    a = scst_step(cap, images, None, [0, 1], reward, samples=3)
    torch.manual_seed(1)
    b = scst_memory_step(cap, *cap.encode(images), [0, 1], reward, samples=3)
    assert torch.allclose(a.loss, b.loss) and (a.reward, a.baseline) == (b.reward, b.baseline)


def test_joint_training_names_the_objects_left_to_right():
    """400 steps of 4 images: the image captions name the two squares' colours in their left-to-right order, which
    only the grid positions and the objects' boxes and classes tell (measured with init seeds 0-3: 200 steps of 8
    learnt it for 1 of 4, 400 steps of 4 for 3 of 4, seed 0 among them with 32 of 32 right, and 600 for the
    fourth)."""
    torch.manual_seed(0)
    det = _detector()
    module = DenseModule(det, _text(), conditioning="prefix", image_decoder=TransformerDecoder(
        dim=32, depth=2, num_heads=2, return_intermediate=False), num_objects=4, lr=2e-3, weight_decay=1e-4,
        warmup_steps=10, schedule="cosine", backbone_lr_mult=1.0)
    trainer = L.Trainer(max_steps=400, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0)
    trainer.fit(module, train_dataloaders=DataLoader(_batches(400, 4, seed=0), batch_size=None, collate_fn=_same))
    images, mask, targets = _batches(1, 32, seed=1)[0]
    module.eval()
    with torch.no_grad():
        out = module.detector(images, mask, features=True)
        ids, _ = module.image_head.generate(module.image_memory(out), method="greedy")
    right = sum(int(i[:6].tolist() == t["image_caption_tokens"].tolist()) for i, t in zip(ids, targets, strict=True))
    assert right / len(targets) >= 0.8, f"{right} of {len(targets)} images captioned in the right order"


def test_image_caption_loss_needs_image_captions_in_the_data():
    module = DenseModule(_detector(), _text(), conditioning="prefix", image_decoder=TransformerDecoder(
        dim=32, depth=1, num_heads=2, return_intermediate=False))
    images, mask, targets = _batches(1, 2, seed=0)[0]
    for t in targets:
        del t["image_caption_tokens"]
    out = module.detector(images, mask, features=True)
    with pytest.raises(ConfigError, match=r"data\.image_captions: true"):
        module.image_caption_loss(out, targets)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    paths = make_shapes(tmp_path_factory.mktemp("imcap"), num_train=6, num_val=2, image_size=96, seed=0)
    path = paths["root"] / "annotations" / "captions_train2017.json"
    data = json.loads(path.read_text())
    first = data["images"][0]["id"]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != first]  # one image without a caption
    path.write_text(json.dumps(data))
    return paths["root"]


def test_targets_carry_the_image_captions_and_the_collate_draws_one(root: Path):
    dm = DenseDataModule(root=str(root), batch_size=6, num_workers=0, train_scales=[64], train_max_size=128,
                         crop_p=0.0, val_size=64, val_max_size=128, hflip_p=0.0, image_captions=True, max_length=32)
    dm.setup("fit")
    captions = json.loads((root / "annotations" / "captions_train2017.json").read_text())["annotations"]
    tok = dm.tokenizer
    assert all(tok.unk_id not in tok.encode(a["caption"]) for a in captions)  # it learned the image captions' words
    _, _, targets = next(iter(dm.train_dataloader()))
    by_image: dict[int, list[str]] = {}
    for a in captions:
        by_image.setdefault(a["image_id"], []).append(a["caption"])
    for t in targets:
        mine = by_image.get(int(t["image_id"]), [])
        assert t["image_captions"] == mine
        tokens = t["image_caption_tokens"]  # (T,)
        if mine:
            assert tok.decode(tokens) in {tok.decode(tok.encode_batch([c])[0]) for c in mine}
        else:
            assert (tokens == tok.pad_id).all()
    assert any(not t["image_captions"] for t in targets)


def test_a_missing_captions_file_is_named(root: Path, tmp_path: Path):
    for sub in ("train2017", "val2017"):
        (tmp_path / sub).symlink_to(root / sub)
    (tmp_path / "annotations").mkdir()
    for split in ("train", "val"):
        name = f"instances_{split}2017.json"
        (tmp_path / "annotations" / name).write_text((root / "annotations" / name).read_text())
    dm = DenseDataModule(root=str(tmp_path), batch_size=2, num_workers=0, image_captions=True)
    with pytest.raises(FileNotFoundError, match=r"captions_train2017\.json"):
        dm.image_captions("train")
