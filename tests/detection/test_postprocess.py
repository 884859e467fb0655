"""PostProcess: pixel boxes of the original image, no-object excluded, Deformable-DETR-style top-k."""

from __future__ import annotations

import pytest
import torch

from vitkit.detection import PostProcess


def test_boxes_scaled_to_original_pixels() -> None:
    boxes = torch.tensor([[[0.5, 0.5, 0.5, 0.25], [0.9, 0.1, 0.4, 0.4]]])  # (1, 2, 4) cxcywh
    logits = torch.tensor([[[4.0, 0.0, 0.0], [0.0, 3.0, 0.0]]])  # (1, 2, 2 + no-object)
    (res,) = PostProcess()({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[200, 400]]))  # h=200, w=400
    # Query 0: xyxy (0.25, 0.375, 0.75, 0.625) * (400, 200, 400, 200).
    # Query 1: xyxy (0.7, -0.1, 1.1, 0.3) -> (280, -20, 440, 60), clamped to the image.
    expected = {0: [100.0, 75.0, 300.0, 125.0], 1: [280.0, 0.0, 400.0, 60.0]}
    for label, box in zip(res["labels"].tolist(), res["boxes"].tolist(), strict=True):
        assert box == pytest.approx(expected[label])


def test_softmax_excludes_no_object_and_batches_sizes() -> None:
    logits = torch.tensor([[[1.0, 2.0, 9.0], [3.0, 0.0, 0.0]], [[0.0, 0.0, 5.0], [0.0, 1.0, 0.0]]])  # (2, 2, 3)
    boxes = torch.full((2, 2, 4), 0.5)
    results = PostProcess()({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[100, 50], [30, 60]]))
    probs = logits.softmax(-1)
    first = results[0]
    # Scores sorted descending: query 1 (class 0, p=0.909...) then query 0 (class 1, despite no-object winning).
    assert first["labels"].tolist() == [0, 1]
    torch.testing.assert_close(first["scores"], torch.stack([probs[0, 1, 0], probs[0, 0, 1]]))
    assert first["labels"].dtype == torch.int64 and first["labels"].is_contiguous()
    assert results[1]["boxes"][0].tolist() == [15.0, 7.5, 45.0, 22.5]  # w=60, h=30
    assert torch.equal(results[0]["boxes"][0], torch.tensor([12.5, 25.0, 37.5, 75.0]))  # w=50, h=100


def test_sigmoid_topk_over_queries_and_classes() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, generator=gen)  # (B, Q, C) sigmoid head
    cxcy, wh = 0.4 + 0.2 * torch.rand(2, 4, 2, generator=gen), 0.1 + 0.2 * torch.rand(2, 4, 2, generator=gen)
    boxes = torch.cat([cxcy, wh], -1)  # (B, Q, 4), inside the image
    sizes = torch.tensor([[100, 200], [300, 150]])
    results = PostProcess(sigmoid=True, num_select=6)({"pred_logits": logits, "pred_boxes": boxes}, sizes)
    for b, res in enumerate(results):
        assert res["scores"].shape == (6,) and res["labels"].shape == (6,) and res["boxes"].shape == (6, 4)
        assert torch.all(res["scores"][:-1] >= res["scores"][1:])
        pairs = sorted(((logits[b, q, c].sigmoid().item(), q, c) for q in range(4) for c in range(5)), reverse=True)
        torch.testing.assert_close(res["scores"], torch.tensor([p[0] for p in pairs[:6]]))
        assert res["labels"].tolist() == [p[2] for p in pairs[:6]] and res["labels"].dtype == torch.int64
        h, w = sizes[b].tolist()
        for box, (_, q, _) in zip(res["boxes"], pairs[:6], strict=True):
            cx, cy, bw, bh = boxes[b, q].tolist()
            expected = torch.tensor([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])
            torch.testing.assert_close(box, expected)


def test_num_select_caps_at_available() -> None:
    out = {"pred_logits": torch.randn(1, 3, 2), "pred_boxes": torch.rand(1, 3, 4)}
    (res,) = PostProcess(sigmoid=True, num_select=100)(out, torch.tensor([[10, 10]]))
    assert res["scores"].shape == (6,)
    (res,) = PostProcess(num_select=100)(out, torch.tensor([[10, 10]]))  # softmax: one per query
    assert res["scores"].shape == (3,)
