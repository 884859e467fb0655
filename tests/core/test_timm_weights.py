"""timm weights: pretrained_file (offline) for ViT and CNN patch sources; the offline hint on a failed download."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from vitkit.core import TimmViTEncoder, ViTEncoder
from vitkit.layers import BackbonePatchEmbed
from vitkit.layers.timm_models import PretrainedWeightsError, create_timm_model


def _saved(tmp_path, name: str, **kwargs) -> tuple[torch.nn.Module, str]:
    """A random-weight timm model (stand-in for pretrained weights) saved as a local .safetensors file."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, str(path)


def test_vit_encoder_starts_from_a_local_timm_file(tmp_path):
    ref, path = _saved(tmp_path, "vit_tiny_patch16_224", depth=2)
    enc = TimmViTEncoder("vit_tiny_patch16_224", pretrained_file=path, depth=2).eval()
    assert isinstance(enc, ViTEncoder) and enc.embed_dim == 192
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(enc.forward_features(x), ref.forward_features(x), atol=1e-5, rtol=1e-5)
    fresh = TimmViTEncoder("vit_tiny_patch16_224", depth=2)  # no weights: a different (random) start
    assert not torch.equal(fresh.blocks[0].attn.qkv.weight, enc.blocks[0].attn.qkv.weight)
    assert set(fresh.state_dict()) == set(enc.state_dict())


def test_cnn_patch_source_starts_from_a_local_timm_file(tmp_path):
    ref, path = _saved(tmp_path, "resnet18")
    pe = BackbonePatchEmbed("resnet18", embed_dim=32, pretrained_file=path, frozen_bn=False).eval()
    torch.testing.assert_close(pe.body.conv1.weight, ref.conv1.weight)
    torch.testing.assert_close(pe.body.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)


def test_missing_or_wrong_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="pretrained_file"):
        create_timm_model("resnet18", pretrained_file=tmp_path / "nope.safetensors")
    _, other = _saved(tmp_path, "resnet10t")
    with pytest.raises(PretrainedWeightsError, match="resnet18"):
        create_timm_model("resnet18", pretrained_file=other)


def test_failed_download_says_how_to_continue_offline(monkeypatch):
    import timm.models._builder as builder

    def no_network(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load this file")

    monkeypatch.setattr(builder, "load_pretrained", no_network)
    with pytest.raises(PretrainedWeightsError) as info:
        BackbonePatchEmbed("resnet18", pretrained=True)
    message = str(info.value)
    assert "could not download" in message and "pretrained_file" in message and "HF_HUB_OFFLINE" in message
