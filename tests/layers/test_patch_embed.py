"""PatchEmbed (conv patchify) and BackbonePatchEmbed (timm CNN as patch source)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from vitkit.layers import BackbonePatchEmbed, PatchEmbed


@pytest.mark.parametrize("H,W", [(32, 32), (33, 47), (1, 1), (17, 16), (64, 20)])
def test_patch_embed_shapes_ceil(H, W):
    pe = PatchEmbed(patch_size=16, in_chans=3, embed_dim=24)
    tokens, mask = pe(torch.randn(2, 3, H, W))
    h, w = math.ceil(H / 16), math.ceil(W / 16)
    assert tokens.shape == (2, h, w, 24)
    assert mask.shape == (2, h, w) and mask.dtype == torch.bool
    assert not mask.any(), "every patch holds a real pixel when no mask is given"


def test_patch_embed_zero_pads_right_bottom():
    pe = PatchEmbed(patch_size=8, embed_dim=16)
    x = torch.randn(1, 3, 13, 21)
    tokens, _ = pe(x)
    ref, _ = pe(F.pad(x, (0, 3, 0, 3)))  # explicit zero pad to 16 x 24
    torch.testing.assert_close(tokens, ref, rtol=0, atol=0)
    # Equal to the conv applied patch by patch: token (1, 2) sees pixels [8:16, 16:24] of the padded image.
    patch = F.pad(x, (0, 3, 0, 3))[:, :, 8:16, 16:24]
    manual = (pe.proj.weight * patch).sum(dim=(1, 2, 3)) + pe.proj.bias  # (D,)
    torch.testing.assert_close(tokens[0, 1, 2], manual, atol=1e-5, rtol=1e-5)


def test_patch_embed_token_mask_hand_computed():
    # 10 x 9 image, patch 4 -> grid 3 x 3 (covering 12 x 12; pixels beyond the image are padding).
    pe = PatchEmbed(patch_size=4, embed_dim=8)
    mask = torch.ones(2, 10, 9, dtype=torch.bool)
    mask[0, :5, :4] = False  # real rows 0..4 (touch patch rows 0, 1), cols 0..3 (patch col 0 only)
    mask[1, 9, 8] = False  # a single real pixel in patch (2, 2)
    _, tok_mask = pe(torch.randn(2, 3, 10, 9), mask)
    expected = torch.tensor(
        [
            [[False, True, True], [False, True, True], [True, True, True]],
            [[True, True, True], [True, True, True], [True, True, False]],
        ]
    )
    assert torch.equal(tok_mask, expected)


def test_patch_embed_partially_padded_patch_is_real():
    pe = PatchEmbed(patch_size=4, embed_dim=8)
    mask = torch.ones(1, 8, 8, dtype=torch.bool)
    mask[0, 3, 3] = False  # one real pixel: only patch (0, 0) is real
    mask[0, 4:, 4:] = False  # patch (1, 1) fully real
    _, tok_mask = pe(torch.randn(1, 3, 8, 8), mask)
    assert torch.equal(tok_mask[0], torch.tensor([[False, True], [True, False]]))


@pytest.mark.parametrize("depths", [None, [1, 2]])
def test_conv_stem_shapes_and_padding_invariance(depths):
    torch.manual_seed(0)
    pe = PatchEmbed(patch_size=8, embed_dim=16, stem_channels=[8, 12], stem_depths=depths).eval()  # 2x2 proj
    assert pe.proj.kernel_size == (2, 2) and len(pe.stem) == 2
    assert pe.stem_strides == {2: 8, 4: 12}
    assert [len(b) for b in pe.stem_blocks] == (depths or [0, 0])
    with torch.no_grad():  # non-trivial BatchNorm statistics, so padding would leak if not re-zeroed
        for layer in [*pe.stem, *(b for blocks in pe.stem_blocks for b in blocks)]:
            layer[1].running_mean.uniform_(-1, 1)
            layer[1].bias.uniform_(0.5, 1)
    img = torch.randn(1, 3, 37, 50)
    big = torch.zeros(1, 3, 64, 72)
    mask = torch.ones(1, 64, 72, dtype=torch.bool)
    big[0, :, :37, :50], mask[0, :37, :50] = img[0], False
    with torch.no_grad():
        alone, alone_mask = pe(img)
        batched, batched_mask = pe(big, mask)
    assert alone.shape == (1, 5, 7, 16) and batched.shape == (1, 8, 9, 16)
    assert not alone_mask.any() and batched_mask[0, :5, :7].logical_not().all() and batched_mask[0, 5:].all()
    torch.testing.assert_close(batched[:, :5, :7], alone, atol=1e-5, rtol=0)


def test_conv_stem_deeper_than_the_patch_is_an_error():
    with pytest.raises(ValueError, match="stem_channels"):
        PatchEmbed(patch_size=4, embed_dim=8, stem_channels=[8, 8, 8])
    with pytest.raises(ValueError, match="stem_depths"):
        PatchEmbed(patch_size=4, embed_dim=8, stem_channels=[8, 8], stem_depths=[1])


def test_stem_depths_add_stride_1_layers_and_keep_the_old_keys():
    plain = PatchEmbed(patch_size=8, embed_dim=16, stem_channels=[8, 12])
    deep = PatchEmbed(patch_size=8, embed_dim=16, stem_channels=[8, 12], stem_depths=[0, 1])
    extra = set(deep.state_dict()) - set(plain.state_dict())
    assert set(plain.state_dict()) <= set(deep.state_dict())  # a checkpoint without the option keeps its key names
    assert extra and all(k.startswith("stem_blocks.1.0.") for k in extra)
    x = torch.randn(2, 3, 32, 24)
    with torch.no_grad():
        deep.load_state_dict(plain.state_dict(), strict=False)
        assert not torch.allclose(deep(x)[0], plain(x)[0])  # the added layer is really applied
        assert deep(x)[0].shape == plain(x)[0].shape == (2, 4, 3, 16)


@pytest.mark.parametrize("shape", [(2, 17, 16), (2, 16, 17), (1, 16, 16), (2, 1, 16, 16)])
def test_patch_embed_mask_shape_validation(shape):
    pe = PatchEmbed(patch_size=8, embed_dim=8)
    with pytest.raises(ValueError, match="mask must have shape"):
        pe(torch.randn(2, 3, 16, 16), torch.zeros(shape, dtype=torch.bool))


@pytest.fixture(scope="module")
def backbone() -> BackbonePatchEmbed:
    torch.manual_seed(0)
    return BackbonePatchEmbed("resnet18", embed_dim=32, freeze_at=2)


def test_backbone_shapes_and_stride(backbone):
    assert backbone.stride == 32 and backbone.embed_dim == 32 and backbone.num_channels == 512
    tokens, mask = backbone.eval()(torch.randn(2, 3, 64, 96))
    assert tokens.shape == (2, 2, 3, 32)
    assert mask.shape == (2, 2, 3) and not mask.any()


def test_backbone_mask_nearest_resized(backbone):
    # 64 x 96 -> 2 x 3; nearest samples pixel rows (0, 32) and cols (0, 32, 64).
    mask = torch.zeros(2, 64, 96, dtype=torch.bool)
    mask[0, 30:, :] = True  # row 32 is padding
    mask[0, :, 50:] = True  # col 64 is padding
    mask[1, :, 40:] = True  # col 64 padding (col 32 real)
    _, tok_mask = backbone.eval()(torch.randn(2, 3, 64, 96), mask)
    expected = torch.tensor([[[False, False, True], [True, True, True]], [[False, False, True], [False, False, True]]])
    assert torch.equal(tok_mask, expected)


def test_backbone_batchnorm_frozen(backbone):
    bns = [m for m in backbone.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
    assert bns and all(isinstance(m, FrozenBatchNorm2d) for m in bns)
    with torch.no_grad():
        for m in bns:  # non-trivial statistics
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    x = torch.randn(2, 3, 64, 64) * 3 + 1
    with torch.no_grad():
        out_train, _ = backbone.train()(x)
        out_eval, _ = backbone.eval()(x)
    for k, v in backbone.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed in train mode"
    torch.testing.assert_close(out_train, out_eval, rtol=0, atol=0)


def test_backbone_freeze_at(backbone):
    body = backbone.body
    for name in ("conv1", "bn1", "layer1"):
        assert all(not p.requires_grad for p in getattr(body, name).parameters()), name
    assert any(True for _ in body.layer1.parameters())
    for name in ("layer2", "layer3", "layer4"):
        assert all(p.requires_grad for p in getattr(body, name).parameters()), name
    assert all(p.requires_grad for p in backbone.input_proj.parameters())
    unfrozen = BackbonePatchEmbed("resnet18", embed_dim=32, freeze_at=0)
    assert all(p.requires_grad for p in unfrozen.parameters())


def test_backbone_channels_last_same_output(backbone):
    x = torch.randn(1, 3, 64, 64)
    cl = BackbonePatchEmbed("resnet18", embed_dim=32, channels_last=True)
    cl.load_state_dict(backbone.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(cl.eval()(x)[0], backbone.eval()(x)[0], atol=1e-4, rtol=1e-4)

