"""DETR model: recipes, convergence switches, padding invariance and a tiny overfit."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_convert, box_iou

from vitkit.core import TransformerDecoder, ViTEncoder
from vitkit.detection import DETR, HungarianMatcher, PostProcess, SetCriterion
from vitkit.detection.queries import token_centres
from vitkit.layers import BackbonePatchEmbed


def vit_detr(num_classes: int = 4, dim: int = 64, stem: list[int] | None = None, **kw) -> DETR:
    enc = ViTEncoder(patch_size=16, embed_dim=dim, depth=2, num_heads=4, pos_embed="rope", class_token=False,
                     stem_channels=stem)
    dec = TransformerDecoder(dim=dim, depth=2, num_heads=4)
    return DETR(enc, dec, num_classes=num_classes, num_queries=10, **kw)


TWO_STAGE = {"sigmoid_head": True, "box_refine": True, "two_stage": True}
MULTISCALE = {**TWO_STAGE, "multiscale": True, "stem": [8, 16, 32, 32]}  # the stride-8 stem map feeds the finer grid
# Stride 8/16/32 grids read by deformable cross-attention (RT-DETR's decoder layout).
DEFORMABLE = {**TWO_STAGE, "multiscale": True, "coarse_level": True, "cross_attn": "deformable",
              "stem": [8, 16, 32, 32]}


@pytest.mark.parametrize("kw", [{}, {"sigmoid_head": True}, {"box_refine": True},
                                {"sigmoid_head": True, "box_refine": True, "num_queries_one2many": 20},
                                {**TWO_STAGE, "num_queries_one2many": 20}, TWO_STAGE, MULTISCALE, DEFORMABLE])
def test_outputs_follow_the_switches(kw):
    m = vit_detr(**kw)
    x = torch.randn(2, 3, 64, 80)
    out = m(x)
    C = 4 if kw.get("sigmoid_head") else 5
    assert out["pred_logits"].shape == (2, 10, C)
    assert out["pred_boxes"].shape == (2, 10, 4)
    assert ((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1)).all()
    assert len(out["aux_outputs"]) == 1
    assert ("one2many" in out) == bool(kw.get("num_queries_one2many"))
    assert ("enc_outputs" in out) == bool(kw.get("two_stage"))
    if "enc_outputs" in out:  # one proposal per grid token: 4 x 5 tokens (+ 8 x 10 finer, + 2 x 3 coarser)
        n = 20 + 80 * bool(kw.get("multiscale")) + 6 * bool(kw.get("coarse_level"))
        assert out["enc_outputs"]["pred_logits"].shape == (2, n, 4)
        assert out["enc_outputs"]["pred_boxes"].shape == (2, n, 4)
    if "one2many" in out:
        assert out["one2many"]["pred_boxes"].shape == (2, 20, 4)
        m.eval()
        assert "one2many" not in m(x)  # extra queries are training-only


def test_one2many_queries_do_not_change_one2one_predictions():
    m = vit_detr(num_queries_one2many=20).train()
    m.encoder.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        with_o2m = m(x)["pred_boxes"]
        m.num_queries_one2many = 0  # same weights, no extra queries
        without = m(x)["pred_boxes"]
    torch.testing.assert_close(with_o2m, without, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kw", [{}, {"sigmoid_head": True, "box_refine": True}, TWO_STAGE, MULTISCALE,
                                {**TWO_STAGE, "multiscale": True}, DEFORMABLE,
                                {"sigmoid_head": True, "box_refine": True, "cross_attn": "deformable"}])
def test_predictions_do_not_change_when_batched_with_a_larger_image(kw):
    m = vit_detr(**kw).eval()
    img = torch.randn(3, 70, 90)
    big = torch.zeros(2, 3, 128, 160)
    mask = torch.ones(2, 128, 160, dtype=torch.bool)
    big[0, :, :70, :90], mask[0, :70, :90] = img, False
    big[1], mask[1] = torch.randn(3, 128, 160), False
    with torch.no_grad():
        alone = m(img[None])
        batched = m(big, mask)
    torch.testing.assert_close(batched["pred_logits"][0], alone["pred_logits"][0], atol=1e-4, rtol=0)
    torch.testing.assert_close(batched["pred_boxes"][0], alone["pred_boxes"][0], atol=1e-4, rtol=0)


def test_deformable_cross_attention_replaces_global_attention_in_every_layer():
    m = vit_detr(**DEFORMABLE)
    assert all(type(layer.cross_attn).__name__ == "MSDeformableAttention" for layer in m.decoder.layers)
    assert m.decoder.layers[0].cross_attn.num_levels == 3
    assert "decoder.layers.0.cross_attn.sampling_offsets.weight" in m.state_dict()  # Deformable DETR's names
    with pytest.raises(ValueError, match="needs box_refine"):
        vit_detr(cross_attn="deformable")
    with pytest.raises(ValueError, match=r"global\|deformable"):
        vit_detr(**TWO_STAGE, cross_attn="local")


def test_deformable_decoder_reads_the_stride_8_grid():
    torch.manual_seed(0)
    m = vit_detr(**DEFORMABLE).train()
    out = m(torch.randn(2, 3, 64, 80))
    (out["pred_logits"].sum() + out["pred_boxes"].sum()).backward()
    assert m.finer.lateral.weight.grad.abs().sum() > 0  # the stem's stride-8 map reaches the decoder's output
    assert m.coarser.down.weight.grad.abs().sum() > 0


def test_two_stage_needs_refinement_and_sigmoid_head():
    with pytest.raises(ValueError, match="two_stage needs box_refine"):
        vit_detr(two_stage=True, sigmoid_head=True)
    with pytest.raises(ValueError, match="two_stage needs box_refine"):
        vit_detr(two_stage=True, box_refine=True)


def test_token_centres_are_relative_to_the_unpadded_grid():
    pad = torch.zeros(2, 3, 4, dtype=torch.bool)
    pad[1, :, 2:] = True  # image 1: 2 real columns
    pad[1, 2:, :] = True  # ... and 2 real rows
    cx, cy = token_centres(pad.flatten(1), (3, 4))
    torch.testing.assert_close(cx[0], torch.tensor([0.125, 0.375, 0.625, 0.875]))
    torch.testing.assert_close(cy[0], torch.tensor([1 / 6, 0.5, 5 / 6]))
    torch.testing.assert_close(cx[1, :2], torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(cy[1, :2], torch.tensor([0.25, 0.75]))


def test_two_stage_proposals_start_at_grid_anchors_of_the_unpadded_image():
    m = vit_detr(**TWO_STAGE, anchor_size=0.2).eval()
    # 40 x 72 real pixels in a 64 x 96 padded batch, patch 16 -> 3 x 5 real tokens of a 4 x 6 grid.
    x = torch.zeros(1, 3, 64, 96)
    mask = torch.ones(1, 64, 96, dtype=torch.bool)
    x[0, :, :40, :72], mask[0, :40, :72] = torch.randn(3, 40, 72), False
    with torch.no_grad():
        enc = m(x, mask)["enc_outputs"]  # every token's proposal; zero-initialised box head = the anchors
    boxes = enc["pred_boxes"][0].view(4, 6, 4)
    real = boxes[:3, :5]
    torch.testing.assert_close(real[..., 0], ((torch.arange(5) + 0.5) / 5).expand(3, 5), atol=1e-4, rtol=0)
    torch.testing.assert_close(real[..., 1], ((torch.arange(3) + 0.5) / 3)[:, None].expand(3, 5), atol=1e-4, rtol=0)
    torch.testing.assert_close(real[..., 2:], torch.full((3, 5, 2), 0.2), atol=1e-5, rtol=0)
    logits = enc["pred_logits"][0].view(4, 6, 4)
    assert (logits[3] == -1e4).all() and (logits[:, 5] == -1e4).all()  # padding tokens never win the top-k
    assert (logits[:3, :5] > -100).all()


def test_multiscale_adds_a_finer_grid_of_half_size_anchors_over_the_stem_map():
    m = vit_detr(**MULTISCALE, anchor_size=0.2).eval()
    assert m.finer.lateral is not None  # the stem's stride-8 map (32 channels) feeds the finer grid
    # 40 x 72 real pixels in a 64 x 96 batch: 3 x 5 real tokens of 4 x 6 at stride 16, 5 x 9 of 8 x 12 at stride 8.
    x = torch.zeros(1, 3, 64, 96)
    mask = torch.ones(1, 64, 96, dtype=torch.bool)
    x[0, :, :40, :72], mask[0, :40, :72] = torch.randn(3, 40, 72), False
    with torch.no_grad():
        enc = m(x, mask)["enc_outputs"]
    fine = enc["pred_boxes"][0, 24:].view(8, 12, 4)
    torch.testing.assert_close(fine[:5, :9, 0], ((torch.arange(9) + 0.5) / 9).expand(5, 9), atol=1e-4, rtol=0)
    torch.testing.assert_close(fine[:5, :9, 1], ((torch.arange(5) + 0.5) / 5)[:, None].expand(5, 9), atol=1e-4,
                               rtol=0)
    torch.testing.assert_close(fine[:5, :9, 2:], torch.full((5, 9, 2), 0.1), atol=1e-5, rtol=0)
    logits = enc["pred_logits"][0, 24:].view(8, 12, 4)
    assert (logits[5:] == -1e4).all() and (logits[:, 9:] == -1e4).all()
    assert (logits[:5, :9] > -100).all()


def test_two_stage_proposals_are_trained_through_the_encoder():
    m = vit_detr(**TWO_STAGE).train()
    out = m(torch.randn(2, 3, 64, 64))
    enc_loss = out["enc_outputs"]["pred_logits"].sum() + out["enc_outputs"]["pred_boxes"].sum()
    enc_loss.backward()
    assert m.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert m.enc_bbox_head.layers[-1].weight.grad.abs().sum() > 0
    assert m.class_embed.weight.grad is None  # the decoder's inputs are detached from the proposals


def test_denoising_queries_do_not_change_matching_predictions():
    m = vit_detr(sigmoid_head=True, box_refine=True, num_denoising=12, num_queries_one2many=20).train()
    _, targets = _toy_batch(2)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        with_dn = m(x, None, targets)
        without = m(x)
    assert "dn_outputs" in with_dn and "dn_outputs" not in without
    meta = with_dn["dn_outputs"]["dn_meta"]
    assert (meta.pad, meta.num_groups) == (2, 6)  # up to 2 targets per image, 12 // 2 groups
    assert with_dn["dn_outputs"]["pred_boxes"].shape == (2, 24, 4) and len(with_dn["dn_outputs"]["aux_outputs"]) == 1
    torch.testing.assert_close(with_dn["pred_boxes"], without["pred_boxes"], atol=1e-5, rtol=0)
    torch.testing.assert_close(with_dn["one2many"]["pred_logits"], without["one2many"]["pred_logits"], atol=1e-5,
                               rtol=0)
    assert "dn_outputs" not in m.eval()(x, None, targets)  # inference never denoises


def test_classic_detr_r50_architecture():
    enc = ViTEncoder(BackbonePatchEmbed("resnet50", embed_dim=256, freeze_at=2), embed_dim=256, depth=6, num_heads=8,
                     mlp_dim=2048, act="relu", norm_eps=1e-5, pos_embed="sine", pos_mode="qk", class_token=False,
                     norm_first=False, final_norm=False)
    dec = TransformerDecoder(dim=256, depth=6, num_heads=8, mlp_dim=2048, act="relu", norm_first=False)
    m = DETR(enc, dec, num_classes=91)
    n = sum(p.numel() for p in m.parameters())
    assert 41.0e6 < n < 41.7e6  # the paper's DETR-R50: 41M parameters
    assert m.class_embed.out_features == 92 and m.query_embed.weight.shape == (100, 256)
    assert [k for k in m.state_dict() if k.startswith("bbox_embed.")] == [
        f"bbox_embed.layers.{i}.{p}" for i in range(3) for p in ("weight", "bias")]
    frozen = {n.split(".")[3] for n, p in m.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "layer1"}  # stem + layer1 frozen (BatchNorm is frozen as buffers)
    out = m.eval()(torch.randn(1, 3, 96, 128))
    assert out["pred_logits"].shape == (1, 100, 92) and len(out["aux_outputs"]) == 5


def _toy_batch(n: int = 4, size: int = 64, seed: int = 0):
    """Images with one or two bright squares on a dark background, labels = colour channel."""
    g = torch.Generator().manual_seed(seed)
    images, targets = torch.zeros(n, 3, size, size), []
    for i in range(n):
        boxes, labels = [], []
        for _ in range(1 + i % 2):
            w, h = (torch.randint(14, 28, (2,), generator=g)).tolist()
            x0 = int(torch.randint(0, size - w, (1,), generator=g))
            y0 = int(torch.randint(0, size - h, (1,), generator=g))
            c = int(torch.randint(0, 3, (1,), generator=g))
            images[i, c, y0:y0 + h, x0:x0 + w] = 2.0
            boxes.append([(x0 + w / 2) / size, (y0 + h / 2) / size, w / size, h / size])
            labels.append(c)
        targets.append({"boxes": torch.tensor(boxes), "labels": torch.tensor(labels), "image_id": i,
                        "orig_size": torch.tensor([size, size]), "size": torch.tensor([size, size])})
    return images, targets


@pytest.mark.slow  # learns: the full suite runs it, the fast tier leaves it out
@pytest.mark.parametrize("sigmoid,two_stage", [(False, False), (True, False), (True, True)])
def test_tiny_detr_overfits_a_few_images(sigmoid, two_stage):
    torch.manual_seed(0)
    images, targets = _toy_batch()
    m = vit_detr(num_classes=3, dim=64, sigmoid_head=sigmoid, box_refine=sigmoid, two_stage=two_stage,
                 num_denoising=20 if two_stage else 0)
    crit = SetCriterion(HungarianMatcher(), eos_coef=0.1).bind(3, sigmoid_head=sigmoid)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    first = None
    for _ in range(150):
        losses = crit(m(images, None, targets), targets)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        loss = losses["loss_bbox"] + losses["loss_giou"] + losses["loss_ce"]  # the final layer's matching losses
        first = first if first is not None else loss.item()
    assert loss.item() < 0.3 * first
    m.eval()
    with torch.no_grad():
        dets = PostProcess(sigmoid=sigmoid)(m(images), torch.tensor([[64, 64]] * 4))
    for d, t in zip(dets, targets, strict=True):
        gt = box_convert(t["boxes"] * 64, "cxcywh", "xyxy")
        order = d["scores"].argsort(descending=True)[: len(gt)]
        iou, best = box_iou(gt, d["boxes"][order]).max(dim=1)
        assert (iou > 0.5).all(), iou  # every GT box found among the top-scoring detections...
        assert torch.equal(d["labels"][order][best], t["labels"])  # ...with its class


@pytest.mark.parametrize("kw", [{}, {"sigmoid_head": True, "box_refine": True, "num_denoising": 8}, TWO_STAGE,
                                DEFORMABLE])
def test_transformer_decoder_forward_runs_for_every_config(kw):
    m = vit_detr(**kw).train()
    calls = []
    m.decoder.register_forward_hook(lambda mod, args, out: calls.append(out.shape))
    _, targets = _toy_batch(2)
    out = m(torch.randn(2, 3, 64, 80), None, targets)
    n_dn = out["dn_outputs"]["pred_boxes"].shape[1] if "dn_outputs" in out else 0
    assert calls == [(2, 2, 10 + n_dn, 64)]  # one decoder pass, every layer's states (L, B, Ndn + Q, D)


def test_parts_keep_the_historic_state_dict_keys():
    keys = set(vit_detr(**TWO_STAGE, num_denoising=8).state_dict())
    for key in ("class_embed.weight", "bbox_embed.1.layers.2.weight", "ref_point_head.layers.1.bias",
                "enc_output.0.weight", "enc_output.1.weight", "enc_score_head.bias", "enc_bbox_head.layers.2.weight",
                "dn_label_embed.weight"):
        assert key in keys, key
    assert not any(k.startswith(("parts.", "query_embed", "refpoint_embed")) for k in keys)
    keys = set(vit_detr(sigmoid_head=True, box_refine=True).state_dict())
    assert {"query_embed.weight", "refpoint_embed.weight"} <= keys


def test_a_refused_config_leaves_the_decoder_untouched():
    dec = TransformerDecoder(dim=64, depth=2, num_heads=4)
    enc = ViTEncoder(patch_size=16, embed_dim=64, depth=1, num_heads=4, class_token=False)
    with pytest.raises(ValueError, match="two_stage needs"):  # deformable asked for, with a refused two_stage
        DETR(enc, dec, num_classes=3, box_refine=True, two_stage=True, cross_attn="deformable")
    assert all(type(layer.cross_attn).__name__ == "MultiheadAttention" for layer in dec.layers)
