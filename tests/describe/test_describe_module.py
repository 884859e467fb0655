"""DescribeModule: joint detection + caption training on generated squares; given boxes are described by what
they hold; the detection step is DetectionModule's own."""

from __future__ import annotations

import copy
import inspect

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from vitkit.captioning import Captioner
from vitkit.captioning.tokenizer import CaptionTokenizer
from vitkit.core import TransformerDecoder, ViTEncoder
from vitkit.describe.module import DescribeModule, stack_caption_tokens
from vitkit.detection import DETR, HungarianMatcher, SetCriterion
from vitkit.detection.module import DetectionModule
from vitkit.training.guards import ConfigError
from vitkit.utils.spec import SPEC_KEY, read_spec

pytestmark = pytest.mark.usefixtures("one_thread")

PAD, BOS, EOS = 0, 1, 2
WORDS = {"red": 3, "blue": 4, "square": 5}
COLOURS = {"red": (2.0, -1.0, -1.0), "blue": (-1.0, -1.0, 2.0)}


def _scene(g: torch.Generator) -> tuple[torch.Tensor, dict]:
    """A 64 x 64 image with a red and a blue 16-px square at random, disjoint places; the red one has a caption
    "red square", the blue one "blue square" (its caption is dropped in a third of the images: detector only)."""
    x = 0.2 * torch.randn(3, 64, 64, generator=g)
    cells = torch.randperm(4, generator=g)[:2].tolist()  # two of the four 32-px quadrants
    boxes, tokens = [], []
    for cell, colour in zip(cells, COLOURS, strict=True):
        x0 = 32 * (cell % 2) + int(torch.randint(0, 16, (1,), generator=g))
        y0 = 32 * (cell // 2) + int(torch.randint(0, 16, (1,), generator=g))
        x[:, y0:y0 + 16, x0:x0 + 16] = torch.tensor(COLOURS[colour])[:, None, None]
        boxes.append([(x0 + 8) / 64, (y0 + 8) / 64, 16 / 64, 16 / 64])
        tokens.append([BOS, WORDS[colour], WORDS["square"], EOS])
    has = torch.tensor([True, bool(torch.rand(1, generator=g) > 0.33)])
    target = {"labels": torch.tensor([0, 1]), "boxes": torch.tensor(boxes), "caption_tokens": torch.tensor(tokens),
              "has_caption": has, "image_id": torch.tensor(0)}
    return x, target


def _batches(n: int, batch: int, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        scenes = [_scene(g) for _ in range(batch)]
        images = torch.stack([s[0] for s in scenes])
        out.append((images, torch.zeros(batch, 64, 64, dtype=torch.bool), [s[1] for s in scenes]))
    return out


def _same(batch):
    return batch


def _module(vocab_size: int = 6, **kwargs) -> DescribeModule:
    torch.manual_seed(0)
    enc = ViTEncoder(patch_size=16, embed_dim=48, depth=1, num_heads=4, pos_embed="rope", class_token=False,
                     stem_channels=[16, 32, 48, 48])
    det = DETR(enc, TransformerDecoder(dim=48, depth=2, num_heads=4), num_classes=2, num_queries=6,
               sigmoid_head=True, box_refine=True, two_stage=True)
    text = Captioner(None, TransformerDecoder(dim=32, depth=1, num_heads=2, return_intermediate=False),
                     vocab_size=vocab_size, max_length=6)
    return DescribeModule(det, text, SetCriterion(HungarianMatcher()), roi_size=3, lr=2e-3, weight_decay=1e-4,
                          warmup_steps=10, schedule="cosine", backbone_lr_mult=1.0, **kwargs)


def test_stack_caption_tokens_pads_the_matched_rows():
    targets = [{"caption_tokens": torch.tensor([[1, 3, 2], [1, 4, 2]])}, {"caption_tokens": torch.tensor([[1, 2]])}]
    out = stack_caption_tokens(targets, [(0, 1), (1, 0)], pad_id=0)
    assert out.tolist() == [[1, 4, 2], [1, 2, 0]]


def test_the_detection_losses_are_the_detection_modules():
    """DescribeModule reuses DetectionModule's training step: on one batch, a DetectionModule with the same detector
    weights and criterion gives the same detection losses, bit for bit; describe adds ``caption_weight`` x
    ``loss_caption`` to the total."""
    describe = _module(caption_weight=0.5).train()
    detection = DetectionModule(copy.deepcopy(describe.detector), SetCriterion(HungarianMatcher())).train()
    images, mask, targets = _batches(1, 4, seed=3)[0]
    torch.manual_seed(1)
    _, ours = describe.training_losses(images, mask, targets)
    torch.manual_seed(1)
    _, theirs = detection.training_losses(images, mask, targets)
    assert set(ours) == set(theirs) | {"loss_caption"}
    for key in set(theirs) - {"loss"}:
        assert torch.equal(ours[key], theirs[key]), key
    assert ours["loss_caption"] > 0
    assert torch.equal(ours["loss"], theirs["loss"] + 0.5 * ours["loss_caption"])


def test_describe_passes_the_detection_options_on_as_they_are():
    """Every DetectionModule argument is a DescribeModule argument with the same type and default (no ``**kwargs``),
    and the networks and the loss are no hyper-parameters."""
    detection = inspect.signature(DetectionModule).parameters
    describe = inspect.signature(DescribeModule).parameters
    assert not any(p.kind is p.VAR_KEYWORD for p in describe.values())
    for name, param in detection.items():
        assert name in describe, name
        assert (describe[name].annotation, describe[name].default) == (param.annotation, param.default), name
    assert {"detector", "text", "criterion"}.isdisjoint(_module().hparams)


def test_joint_training_describes_given_boxes_by_their_object():
    """About 150 steps: the caption loss falls, and each ground-truth box given at inference gets the caption of
    the square it holds."""
    module = _module()
    train = _batches(150, 8, seed=0)
    trainer = L.Trainer(max_steps=150, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0)
    trainer.fit(module, train_dataloaders=DataLoader(train, batch_size=None, collate_fn=_same))
    assert float(trainer.callback_metrics["train/loss_caption_epoch"]) < 0.9  # from ~ln(6) = 1.8 at the start
    model = module.describer().eval()
    images, mask, targets = _batches(1, 16, seed=1)[0]
    out = model.describe(images, mask, boxes=[t["boxes"] for t in targets], method="greedy")
    right = total = 0
    for d, t in zip(out, targets, strict=True):
        for ids, expected in zip(d["ids"], t["caption_tokens"], strict=True):
            total += 1
            right += int(ids[:4].tolist() == expected.tolist())
    assert right / total >= 0.9, f"{right} of {total} given boxes described by their own square"


def test_checkpoints_record_both_networks_and_the_tokenizer():
    tok = CaptionTokenizer.train(["red square", "blue square"], vocab_size=50, model="wordlevel")
    module = _module(vocab_size=tok.vocab_size)
    ckpt: dict = {}
    module.on_save_checkpoint(ckpt)
    assert SPEC_KEY not in ckpt  # not built through the CLI: no configs to record
    module.tokenizer = tok
    module.detector_config = {"class_path": "vitkit.detection.DETR", "init_args": {"num_classes": 2}}
    module.text_config = {"class_path": "vitkit.captioning.Captioner",
                          "init_args": {"encoder": None, "vocab_size": tok.vocab_size}}
    module.on_save_checkpoint(ckpt)
    spec = read_spec(ckpt)
    assert spec.task == "describe" and spec.tokenizer == tok.to_str() and (spec.size, spec.max_size) == (800, 1333)
    assert spec.model_config == {"detector": module.detector_config, "text": module.text_config,
                                 "roi_size": 3}
    fresh = _module(vocab_size=tok.vocab_size)
    fresh.on_load_checkpoint(ckpt)
    assert fresh.tokenizer.to_str() == tok.to_str()
    assert (fresh.detector_config, fresh.text_config) == (module.detector_config, module.text_config)
    with pytest.raises(ConfigError, match="does not match the text decoder's"):
        _module(vocab_size=tok.vocab_size + 1).on_load_checkpoint(ckpt)
