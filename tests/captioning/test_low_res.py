"""Progressive resizing of caption training (issue 16): the batch rescale keeps each image's content and padding
apart, and the module downscales exactly the steps before ``low_res_until``."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from vitkit.captioning import Captioner
from vitkit.captioning.module import CaptionModule
from vitkit.core import TransformerDecoder, ViTEncoder
from vitkit.data.collate import pad_images, real_size, rescale_batch
from vitkit.training.guards import ConfigError


def test_rescale_batch_scales_each_real_region_and_pads_again():
    left_right = torch.cat((torch.ones(3, 40, 30), -torch.ones(3, 40, 30)), dim=2)  # (3, 40, 60): +1 | -1
    flat = torch.full((3, 24, 32), 0.5)
    images, mask = pad_images([left_right, flat], pad_to_multiple=16)  # (2, 3, 48, 64)
    small, small_mask = rescale_batch(images, mask, 0.5, pad_to_multiple=8)
    assert small.shape == (2, 3, 24, 32) and small_mask.shape == (2, 24, 32)
    assert real_size(small, small_mask).tolist() == [[30.0, 20.0], [16.0, 12.0]]
    # a flat image stays flat up to its edge: padding is not blended into it
    assert torch.allclose(small[1, :, :12, :16], torch.full((3, 12, 16), 0.5))
    assert not small[1, :, 12:].any() and not small[1, :, :, 16:].any()
    # the left half stays bright and the right half dark
    assert (small[0, :, :20, :14] > 0.99).all() and (small[0, :, :20, 16:30] < -0.99).all()
    assert not small[0, :, 20:].any()


def test_rescale_batch_identity_and_bad_scale():
    images = torch.randn(2, 3, 16, 24)
    same, mask = rescale_batch(images, None, 1.0)
    assert torch.allclose(same, images, atol=1e-6) and not mask.any()
    with pytest.raises(ValueError, match="scale"):
        rescale_batch(images, None, 0.0)


def _module(**kwargs) -> CaptionModule:
    encoder = ViTEncoder(patch_size=8, embed_dim=32, depth=1, num_heads=2, pos_embed="sine", class_token=False)
    decoder = TransformerDecoder(dim=32, depth=1, num_heads=2, return_intermediate=False)
    module = CaptionModule(Captioner(encoder, decoder, vocab_size=20, max_length=8), **kwargs)
    module.log = lambda *a, **k: None
    return module


def test_low_res_steps_end_at_their_share_of_the_schedule():
    module = _module(low_res_scale=0.5, low_res_until=0.4)
    images, mask = torch.randn(2, 3, 32, 48), torch.zeros(2, 32, 48, dtype=torch.bool)
    mask[1, 24:] = True  # image 1 is 24 px high
    assert module.train_inputs(images, mask)[0].shape == images.shape  # no schedule yet: full size
    module.total_steps = 10
    shapes = []
    for step in range(6):
        module._trainer = SimpleNamespace(global_step=step, current_epoch=0)
        small, small_mask = module.train_inputs(images, mask)
        shapes.append(tuple(small.shape[-2:]))
        if step < 4:
            assert real_size(small, small_mask).tolist() == [[24.0, 16.0], [24.0, 12.0]]
    assert shapes == [(16, 24)] * 4 + [(32, 48)] * 2
    module._trainer = SimpleNamespace(global_step=0, current_epoch=0)
    tokens = torch.tensor([[1, 5, 6, 2], [1, 7, 2, 0]])
    loss = module.training_step((images, mask, tokens, [1, 2]), 0)  # a low-resolution step trains end to end
    loss.backward()
    assert torch.isfinite(loss) and module.captioner.encoder.patch_embed.proj.weight.grad.abs().sum() > 0


def test_low_res_settings_are_checked():
    assert _module(low_res_scale=None).hparams.low_res_scale is None
    for bad in ({"low_res_scale": 0.0}, {"low_res_scale": 1.5}, {"low_res_scale": 0.5, "low_res_until": 1.2}):
        with pytest.raises(ConfigError, match="low_res"):
            _module(**bad)


def test_batch_scales_resize_each_step_by_one_drawn_factor():
    module = _module(batch_scales=[0.5, 1.5])
    images, mask = torch.randn(2, 3, 32, 48), torch.zeros(2, 32, 48, dtype=torch.bool)
    mask[1, 24:] = True  # image 1 is 24 px high
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out, out_mask = module.train_inputs(images, mask)
        sizes = real_size(out, out_mask).tolist()
        factor = sizes[0][0] / 48
        assert factor in (0.5, 1.5) and sizes == [[48 * factor, 32 * factor], [48 * factor, 24 * factor]]
        torch.manual_seed(seed)
        assert torch.equal(module.train_inputs(images, mask)[0], out)  # the step's seeded RNG decides
        seen.add(factor)
    assert seen == {0.5, 1.5}
    module = _module(batch_scales=[2.0], low_res_scale=0.25, low_res_until=0.5)  # the two multiply
    module.total_steps = 10
    module._trainer = SimpleNamespace(global_step=0, current_epoch=0)
    assert real_size(*module.train_inputs(images, mask)).tolist() == [[24.0, 16.0], [24.0, 12.0]]
    module._trainer = SimpleNamespace(global_step=5, current_epoch=0)
    assert real_size(*module.train_inputs(images, mask)).tolist() == [[96.0, 64.0], [96.0, 48.0]]
    for bad in ([], [1.0, 0.0]):
        with pytest.raises(ConfigError, match="batch_scales"):
            _module(batch_scales=bad)
