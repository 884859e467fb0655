"""Contrastive denoising queries: noise bounds, group layout, attention mask and the assigned loss."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import box_convert

from vitkit.detection import HungarianMatcher, SetCriterion
from vitkit.detection.denoising import make_denoising_queries, query_attention_mask


def _targets(counts: list[int], seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in counts:
        cxcy = torch.rand(n, 2, generator=g) * 0.2 + 0.4
        wh = torch.rand(n, 2, generator=g) * 0.1 + 0.05
        out.append({"labels": torch.randint(0, 3, (n,), generator=g), "boxes": torch.cat((cxcy, wh), 1)})
    return out


def test_positive_queries_stay_within_half_a_box_and_negatives_go_further():
    torch.manual_seed(0)
    targets = _targets([3, 1])
    embed = nn.Embedding(4, 8)
    dn = make_denoising_queries(targets, embed, 3, num_denoising=30, label_noise=0.0)
    content, anchors, meta = dn.content, dn.boxes, dn.meta
    assert (meta.pad, meta.num_groups, meta.num_queries) == (3, 10, 60)
    assert content.shape == (2, 60, 8) and anchors.shape == (2, 60, 4)
    gt = box_convert(targets[0]["boxes"], "cxcywh", "xyxy")  # (3, 4), all well inside the image: no clipping
    half = targets[0]["boxes"][:, 2:].repeat(1, 2) / 2  # (3, 4)
    xyxy = box_convert(anchors[0].view(10, 2, 3, 4), "cxcywh", "xyxy")  # (groups, pos/neg, pad, 4)
    offset = (xyxy - gt).abs() / half  # in half-sizes
    assert (offset[:, 0] < 1 + 1e-4).all()  # positives: under one half-size per edge
    # Negatives: one to two half-sizes per edge, unless opposite edges crossed (then the box collapses).
    neg_ok = (anchors[0].view(10, 2, 3, 4)[:, 1, :, 2:] > 0).all(-1)  # (groups, pad) non-degenerate
    assert neg_ok.float().mean() > 0.5
    assert (offset[:, 1][neg_ok] > 1 - 1e-4).all() and (offset[:, 1][neg_ok] < 2 + 1e-4).all()
    # Padding entries (image 1 has one target of pad 3) use the padding class and an empty box.
    pad_rows = torch.tensor([j % 3 != 0 for j in range(60)])
    assert torch.equal(content[1, pad_rows], embed.weight[3].expand(int(pad_rows.sum()), -1))
    assert (anchors[1, pad_rows] == 0).all()
    assert make_denoising_queries(_targets([0, 0]), embed, 3, num_denoising=30) is None


def test_label_noise_flips_about_the_requested_fraction():
    torch.manual_seed(0)
    targets = _targets([4] * 8)
    embed = nn.Embedding(4, 4)
    with torch.no_grad():
        embed.weight.copy_(torch.eye(4))  # one-hot content: argmax gives the fed label
    dn = make_denoising_queries(targets, embed, 3, num_denoising=400, label_noise=0.5)
    content, meta = dn.content, dn.meta
    fed = content.argmax(-1)  # (8, N)
    true = torch.stack([t["labels"].repeat(2 * meta.num_groups) for t in targets])
    changed = (fed != true).float().mean().item()
    # Flip probability 0.25 to a uniformly random class (1/3 of them land on the true label): ~1/6 change.
    assert 0.12 < changed < 0.22, changed


def test_attention_mask_keeps_matching_queries_blind_to_denoising():
    mask = query_attention_mask(num_dn=8, num_groups=2, num_queries=3, num_one2many=2, device=torch.device("cpu"))
    assert mask.shape == (13, 13)
    dn, o2o, o2m = slice(0, 8), slice(8, 11), slice(11, 13)
    assert mask[o2o, dn].all() and mask[o2m, dn].all()  # no leak of targets into the predictions
    assert not mask[dn, o2o].any()  # denoising queries read the matching ones
    assert mask[0:4, 4:8].all() and mask[4:8, 0:4].all()  # groups are separate
    assert not mask[0:4, 0:4].any() and not mask[o2o, o2o].any() and not mask[o2m, o2m].any()
    assert mask[o2o, o2m].all() and mask[o2m, o2o].all() and mask[dn, o2m].all()
    assert query_attention_mask(0, 1, 5, 0, torch.device("cpu")) is None


def test_denoising_loss_uses_the_known_assignment():
    torch.manual_seed(0)
    targets = _targets([2, 1])
    embed = nn.Embedding(4, 8)
    queries = make_denoising_queries(targets, embed, 3, num_denoising=4)
    anchors, meta = queries.boxes, queries.meta
    logits = torch.full((2, meta.num_queries, 3), -8.0)
    boxes = anchors.clone()
    for b, (src, tgt) in enumerate(meta.positive_indices([2, 1])):
        boxes[b, src] = targets[b]["boxes"][tgt]  # positives reconstruct their target exactly...
        logits[b, src, targets[b]["labels"][tgt]] = 8.0  # ...and name its class; negatives say background
    crit = SetCriterion(HungarianMatcher()).bind(3, sigmoid_head=True)
    main = {"pred_logits": torch.zeros(2, 5, 3), "pred_boxes": torch.full((2, 5, 4), 0.5)}
    dn = {"pred_logits": logits, "pred_boxes": boxes, "dn_meta": meta}
    losses = crit({**main, "dn_outputs": dn}, targets)
    assert losses["loss_bbox_dn"] < 1e-5 and losses["loss_giou_dn"] < 1e-4 and losses["loss_ce_dn"] < 1e-3
    shuffled = {**dn, "pred_boxes": boxes.flip(1)}  # the same boxes at the wrong queries are penalised
    assert crit({**main, "dn_outputs": shuffled}, targets)["loss_bbox_dn"] > 0.1
