"""DETR outputs for the same weights stay bit-identical to those saved before the composition refactor."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.support.detr_reference import REFERENCE, build, run
from vitkit.detection import DETR
from vitkit.utils.config import instantiate


@pytest.mark.parametrize("kind", ["vanilla", "shapes"])
def test_outputs_are_bit_identical_to_the_saved_reference(kind):
    saved = {k[len(kind) + 1:]: v for k, v in load_file(REFERENCE).items() if k.startswith(kind + ".")}
    got = run(build(kind, instantiate, DETR))
    assert sorted(got) == sorted(saved)
    for key, ref in saved.items():
        assert torch.equal(got[key], ref), key
