"""Prepacked oneDNN linear weights (vitkit.kernels.packed): same numbers as F.linear, never stale."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitkit.kernels import packed
from vitkit.kernels.precision import apply_precision
from vitkit.layers.mlp import Mlp

pytestmark = pytest.mark.skipif(not packed.packing_available(torch.bfloat16),
                                reason="oneDNN bf16 packing needs a CPU with AVX-512 bf16 or AMX")


def _bf16_linear(n_in: int = 24, n_out: int = 40) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(n_in, n_out).to(torch.bfloat16)


def _packed_linear_and_input() -> tuple[nn.Linear, torch.Tensor]:
    """A packed bf16 24 -> 40 layer and a (4, 24) bf16 input."""
    lin = _bf16_linear()
    packed.pack_linears(lin)
    return lin, torch.randn(4, 24).to(torch.bfloat16)


def test_packed_linear_equals_f_linear_whole_and_sliced():
    lin = _bf16_linear()
    ref = copy.deepcopy(lin)
    assert packed.pack_linears(lin) == 1 and type(lin) is packed.PackedLinear
    x = torch.randn(3, 5, 24).to(torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(lin(x), ref(x))
        for start, stop in ((0, 8), (8, 40), (16, 24)):
            got = packed.linear(lin, x, start, stop)
            assert torch.equal(got, F.linear(x, ref.weight[start:stop], ref.bias[start:stop]))
    assert len(getattr(lin, packed._PACKS)) == 4  # the whole weight and three slices, each packed once
    assert list(lin.state_dict()) == ["weight", "bias"]


def test_packed_copy_is_retired_when_the_weight_changes():
    lin, x = _packed_linear_and_input()
    with torch.no_grad():
        before = lin(x)
        new = {k: torch.randn_like(v) for k, v in lin.state_dict().items()}
        lin.load_state_dict(new)  # in place: bumps the weight's version
        after = lin(x)
    assert not torch.equal(before, after)
    assert torch.equal(after, F.linear(x, new["weight"], new["bias"]))


def test_autograd_takes_the_plain_path_and_fp32_packs_too():
    lin, x = _packed_linear_and_input()
    out = lin(x)  # grad enabled: must stay differentiable, nothing packed
    out.float().sum().backward()
    assert lin.weight.grad is not None and not getattr(lin, packed._PACKS)
    lin.float()  # a new fp32 weight: the fp32 copy is packed on first use, within float rounding of F.linear
    with torch.no_grad():
        got = lin(x.float())
    assert got.dtype == torch.float32 and getattr(lin, packed._PACKS)
    torch.testing.assert_close(got, F.linear(x.float(), lin.weight, lin.bias), atol=1e-5, rtol=1e-5)
    with torch.no_grad(), pytest.raises(RuntimeError):  # another dtype than the weight's: F.linear's own error
        lin(x)


def test_fused_mlp_uses_the_packed_fc1_and_keeps_its_output():
    torch.manual_seed(0)
    mlp = Mlp(32, 64, act_layer=nn.GELU).eval().to(torch.bfloat16)
    ref = copy.deepcopy(mlp)
    packed.pack_linears(mlp)
    x = torch.randn(2, 7, 32).to(torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(mlp(x), ref(x))
    assert getattr(mlp.fc1, packed._PACKS)  # fc1 was packed by the fused path


def test_apply_precision_packs_bf16_and_unpacks_fp32():
    from vitkit.captioning import Captioner
    from vitkit.core import TransformerDecoder, ViTEncoder

    torch.manual_seed(0)
    enc = ViTEncoder(patch_size=16, embed_dim=64, depth=2, num_heads=4, pos_embed="rope", class_token=False)
    dec = TransformerDecoder(dim=64, depth=2, num_heads=4, return_intermediate=False)
    model = Captioner(enc, dec, vocab_size=50, max_length=12, pad_id=0, bos_id=1, eos_id=2).eval()
    plain = copy.deepcopy(model).to(torch.bfloat16)
    apply_precision(model, "bf16")
    assert any(type(m) is packed.PackedLinear for m in model.modules())
    assert model.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(3, 3, 64, 64).to(torch.bfloat16)
    with torch.inference_mode():
        for method in ("greedy", "beam"):
            ids, scores = model.generate(x, method=method, max_length=10)
            ids_ref, scores_ref = plain.generate(x, method=method, max_length=10)
            assert torch.equal(ids, ids_ref) and torch.equal(scores, scores_ref)
    apply_precision(model, "fp32")
    assert next(model.parameters()).dtype == torch.float32
    with torch.inference_mode():
        ids32, _ = model.generate(x.float(), method="greedy", max_length=10)
    assert ids32.shape[0] == 3
    assert any(getattr(m, packed._PACKS, None) and next(iter(m._vitkit_packs.values()))[1].dtype == torch.float32
               for m in model.modules())
    packed.unpack_linears(model)
    assert not any(type(m) is packed.PackedLinear or hasattr(m, packed._PACKS) for m in model.modules())


def test_a_packed_model_copies_and_pickles_and_repacks():
    import pickle

    lin, x = _packed_linear_and_input()
    with torch.no_grad():
        out = lin(x)
        twin = copy.deepcopy(lin)
        loaded = pickle.loads(pickle.dumps(lin))
        for other in (twin, loaded):
            assert type(other) is packed.PackedLinear and not getattr(other, packed._PACKS)
            assert torch.equal(other(x), out)
            assert getattr(other, packed._PACKS)  # packed again on first use
