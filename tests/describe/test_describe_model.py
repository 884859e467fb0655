"""DescribeModel: region memory (query, box and RoI tokens), padding invariance, matched and given regions,
detections."""

from __future__ import annotations

import pytest
import torch

from vitkit.captioning import Captioner
from vitkit.core import TransformerDecoder, ViTEncoder
from vitkit.describe.model import DescribeModel, RegionCaptionHead, Regions, box_features, real_size
from vitkit.detection import DETR

pytestmark = pytest.mark.usefixtures("one_thread")

TWO_STAGE = {"sigmoid_head": True, "box_refine": True, "two_stage": True}


def describe_model(**kw) -> DescribeModel:
    torch.manual_seed(0)
    enc = ViTEncoder(patch_size=16, embed_dim=32, depth=1, num_heads=2, pos_embed="rope", class_token=False,
                     stem_channels=[8, 16, 32, 32])
    det = DETR(enc, TransformerDecoder(dim=32, depth=2, num_heads=2), num_classes=3, num_queries=8, **TWO_STAGE, **kw)
    text = Captioner(None, TransformerDecoder(dim=24, depth=1, num_heads=2, return_intermediate=False),
                     vocab_size=12, max_length=8)
    model = DescribeModel(det, RegionCaptionHead(32, text, roi_size=3))
    for p in model.head.region_memory.parameters():  # non-trivial slot and RoI embeddings
        torch.nn.init.normal_(p, std=0.5)
    return model.eval()


def _padded_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """Image 0: 72 x 88 real pixels; image 1: 96 x 128; batched as (2, 3, 96, 128) with its padding mask."""
    torch.manual_seed(1)
    x = torch.zeros(2, 3, 96, 128)
    mask = torch.ones(2, 96, 128, dtype=torch.bool)
    x[0, :, :72, :88], mask[0, :72, :88] = torch.randn(3, 72, 88), False
    x[1], mask[1] = torch.randn(3, 96, 128), False
    return x, mask


def test_real_size_reads_the_padding_mask():
    x, mask = _padded_pair()
    assert real_size(x, mask).tolist() == [[88.0, 72.0], [128.0, 96.0]]
    assert real_size(x, None).tolist() == [[128.0, 96.0], [128.0, 96.0]]


def test_region_captions_do_not_change_when_batched_with_a_larger_image():
    model = describe_model()
    x, mask = _padded_pair()
    boxes = [torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.9, 0.8, 0.2, 0.4]]), torch.tensor([[0.3, 0.3, 0.2, 0.2]])]
    alone = x[:1, :, :80, :96]  # image 0 padded to a multiple of 16 only
    alone_mask = mask[:1, :80, :96]
    with torch.no_grad():
        out_b, out_a = model(x, mask), model(alone, alone_mask)
        mem_b = model.head.memory(out_b, model.head.regions_for_boxes(out_b, boxes))[:2]  # image 0's two regions
        mem_a = model.head.memory(out_a, model.head.regions_for_boxes(out_a, boxes[:1]))
    torch.testing.assert_close(mem_b, mem_a, atol=1e-4, rtol=1e-4)
    batched = model.describe(x, mask, boxes=boxes, method="greedy")
    single = model.describe(alone, alone_mask, boxes=boxes[:1], method="greedy")
    assert torch.equal(batched[0]["ids"], single[0]["ids"])
    assert [len(d["ids"]) for d in batched] == [2, 1]


def test_roi_memory_reads_the_box():
    """Two boxes on different halves of one image get different RoI tokens; the query token does not see it."""
    model = describe_model()
    x, mask = _padded_pair()
    with torch.no_grad():
        out = model(x, mask)
        hidden = out["hidden"][1, :1].expand(2, -1)  # one query state for both
        regions = Regions(torch.tensor([1, 1]), torch.tensor([[0.25, 0.5, 0.4, 0.8], [0.75, 0.5, 0.4, 0.8]]), hidden)
        mem = model.head.memory(out, regions)  # (2, 2 + 9, D)
    assert mem.shape == (2, 11, 24)
    torch.testing.assert_close(mem[0, 0], mem[1, 0])  # the query token
    assert not torch.allclose(mem[0, 2:], mem[1, 2:], atol=1e-3)  # what the boxes cover


def test_given_boxes_take_the_state_of_the_query_that_overlaps_them_most():
    model = describe_model()
    x, mask = _padded_pair()
    with torch.no_grad():
        out = model(x, mask)
    target = out["pred_boxes"][1, 5].clone()
    none, (query,) = model.head.overlapping_queries(out, [torch.zeros(0, 4), target[None]])
    assert none.numel() == 0
    torch.testing.assert_close(out["pred_boxes"][1, query], target)  # query 5, or one with the very same box
    regions = model.head.regions_for_boxes(out, [torch.zeros(0, 4), target[None]])
    assert regions.batch.tolist() == [1]
    torch.testing.assert_close(regions.hidden[0], out["hidden"][1, query])
    torch.testing.assert_close(regions.boxes[0], target)


def test_matched_regions_keep_captioned_objects_up_to_the_cap():
    model = describe_model()
    model.head.max_regions = 2
    x, mask = _padded_pair()
    with torch.no_grad():
        out = model(x, mask)
    indices = [(torch.tensor([3, 1]), torch.tensor([0, 1])), (torch.tensor([6, 2]), torch.tensor([1, 0]))]
    has_caption = [torch.tensor([True, False]), torch.tensor([True, True])]
    regions, pairs = model.head.matched_regions(out, indices, has_caption)
    assert pairs == [(0, 0), (1, 1)]  # image 0's target 1 has no caption; the cap stops after 2
    assert regions.batch.tolist() == [0, 1]
    torch.testing.assert_close(regions.hidden, torch.stack((out["hidden"][0, 3], out["hidden"][1, 6])))
    assert not regions.boxes.requires_grad


def test_detections_are_the_confident_queries_by_score():
    model = describe_model()
    x, mask = _padded_pair()
    with torch.no_grad():
        out = model(x, mask)
        scores, _ = model.query_scores(out)
        found = model.detections(out, threshold=float(scores[0].median()), max_detections=3)
        described = model.describe(x, mask, threshold=0.0, max_detections=2, method="greedy")
    assert len(found[0]["queries"]) == 3
    assert found[0]["scores"].tolist() == sorted(found[0]["scores"].tolist(), reverse=True)
    torch.testing.assert_close(found[0]["scores"], scores[0].sort(descending=True).values[:3])
    assert [d["ids"].shape[0] for d in described] == [2, 2]
    assert all(d["ids"][:, 0].eq(model.head.text.bos_id).all() for d in described)


def test_the_text_side_must_have_no_image_encoder():
    model = describe_model()
    enc = ViTEncoder(patch_size=16, embed_dim=24, depth=1, num_heads=2)
    with_encoder = Captioner(enc, TransformerDecoder(dim=24, depth=1, num_heads=2, return_intermediate=False), 12)
    with pytest.raises(ValueError, match="encoder=None"):
        RegionCaptionHead(32, with_encoder)
    with pytest.raises(RuntimeError, match="no image encoder"):
        model.head.text.encode(torch.zeros(1, 3, 32, 32))


def test_box_features_add_log_sizes_so_area_is_linear():
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.1], [0.3, 0.7, 0.0, 1.0]])  # (2, 4) cxcywh, the second degenerate
    f = box_features(boxes)
    assert f.shape == (2, 6) and torch.equal(f[:, :4], boxes)
    torch.testing.assert_close(f[0, 4:].sum().exp(), torch.tensor(0.02))  # log w + log h = log of the box's area
    assert torch.isfinite(f).all() and f[1, 4] == torch.tensor(1e-3).log()
