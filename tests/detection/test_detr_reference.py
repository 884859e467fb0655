"""DETR outputs for the same weights stay bit-identical to those saved before the composition refactor."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.support.detr_reference import REFERENCE, build, run
from vitkit.detection import DETR
from vitkit.utils.config import instantiate

RECORDED_THREADS = 2  # tests/support/detr_reference.safetensors was written on 2 torch threads


@pytest.fixture
def recorded_threads():
    """The thread count of the recording: CPU reductions split across threads sum in another order, so a float
    result is only bit-reproducible at the same count (the xdist workers of the CI command run on 1 thread)."""
    n = torch.get_num_threads()
    torch.set_num_threads(RECORDED_THREADS)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("kind", ["vanilla", "shapes"])
def test_outputs_are_bit_identical_to_the_saved_reference(kind, recorded_threads):
    saved = {k[len(kind) + 1:]: v for k, v in load_file(REFERENCE).items() if k.startswith(kind + ".")}
    got = run(build(kind, instantiate, DETR))
    assert sorted(got) == sorted(saved)
    for key, ref in saved.items():
        assert torch.equal(got[key], ref), key
