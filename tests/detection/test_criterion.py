"""SetCriterion: perfect predictions, bf16, aux / one-to-many keys, empty targets, learning a toy problem, DDP, binding
to a detector's head."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vitkit.detection import HungarianMatcher, SetCriterion, average_num_boxes

C = 3
LOSS_TYPES = ["ce", "varifocal"]
COMPONENTS = ("loss_ce", "loss_bbox", "loss_giou")


def _criterion(loss_type: str, **kwargs) -> SetCriterion:
    """"ce" is a softmax head's loss, "varifocal" a sigmoid head's: the criterion bound to such a head."""
    return SetCriterion(HungarianMatcher(), **kwargs).bind(C, sigmoid_head=loss_type != "ce")


def _targets(sizes: list[int], seed: int = 0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate(sizes):
        boxes = torch.cat([0.3 + 0.4 * torch.rand(n, 2, generator=gen), 0.1 + 0.2 * torch.rand(n, 2, generator=gen)], 1)
        labels = torch.randint(0, C, (n,), generator=gen)
        size = torch.tensor([240, 320])
        out.append({"boxes": boxes, "labels": labels, "image_id": i, "orig_size": size, "size": size})
    return out


def _random_outputs(batch: int, queries: int, loss_type: str, seed: int = 0, aux: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    width = C + (loss_type == "ce")

    def layer() -> dict:
        return {"pred_logits": torch.randn(batch, queries, width, generator=gen),
                "pred_boxes": torch.rand(batch, queries, 4, generator=gen) * 0.5 + 0.25}

    out = layer()
    out["aux_outputs"] = [layer() for _ in range(aux)]
    return out


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_perfect_prediction_gives_near_zero_losses(loss_type: str) -> None:
    targets = _targets([2, 1])
    out = _random_outputs(2, 4, loss_type)
    logits = torch.full_like(out["pred_logits"], -12.0)
    if loss_type == "ce":
        logits[..., C] = 12.0  # unmatched queries: confident no-object
    for b, t in enumerate(targets):
        n = len(t["labels"])
        out["pred_boxes"][b, :n] = t["boxes"]
        logits[b, :n] = -12.0
        logits[b, torch.arange(n), t["labels"]] = 12.0
    out["pred_logits"] = logits
    losses = _criterion(loss_type)(out, targets)
    assert losses["loss_bbox"] < 1e-6 and losses["loss_giou"] < 1e-5
    assert losses["loss_ce"] < 1e-3
    assert losses["diag_class_error"] == 0 and losses["diag_cardinality_error"] == 0


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_bf16_autocast_finite_losses_and_grads(loss_type: str) -> None:
    out = _random_outputs(2, 6, loss_type, aux=1)
    out["one2many"] = _random_outputs(2, 12, loss_type, seed=1, aux=1)
    leaves = []
    for layer in [out, *out["aux_outputs"], out["one2many"], *out["one2many"]["aux_outputs"]]:
        logits = (8 * layer["pred_logits"]).bfloat16().requires_grad_()
        raw = torch.logit(layer["pred_boxes"]).bfloat16().requires_grad_()
        leaves += [logits, raw]
        layer["pred_logits"], layer["pred_boxes"] = logits, raw.sigmoid()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = _criterion(loss_type, one2many_k=2)(out, _targets([3, 0]))
        losses["loss"].backward()
    assert all(torch.isfinite(v).all() for v in losses.values())
    assert losses["loss"].dtype == torch.float32
    for leaf in leaves:
        assert leaf.grad is not None and torch.isfinite(leaf.grad.float()).all() and leaf.grad.abs().sum() > 0


def test_aux_keys_present_and_summed() -> None:
    losses = _criterion("ce")(_random_outputs(2, 5, "ce", aux=2), _targets([2, 3]))
    expected = {f"{k}{s}" for k in COMPONENTS for s in ("", "_0", "_1")}
    assert expected | {"loss"} | SetCriterion.diagnostic_keys == set(losses)
    assert losses["loss"] == pytest.approx(sum(losses[k].item() for k in expected), rel=1e-6)


def test_weights_scale_components() -> None:
    out, targets = _random_outputs(1, 5, "ce"), _targets([2])
    base = _criterion("ce")(out, targets)
    heavy = _criterion("ce", loss_giou=4.0)(out, targets)
    assert heavy["loss_giou"] == pytest.approx(2 * base["loss_giou"].item())
    assert heavy["loss_bbox"] == pytest.approx(base["loss_bbox"].item())


def test_bad_config_and_shapes_raise() -> None:
    with pytest.raises(TypeError, match="loss_mask"):
        _criterion("ce", loss_mask=1.0)
    with pytest.raises(ValueError, match="expects 3 logits"):
        _criterion("varifocal")(_random_outputs(1, 5, "ce"), _targets([1]))  # C+1 logits given to a sigmoid loss
    with pytest.raises(RuntimeError, match="not bound"):
        SetCriterion(HungarianMatcher())(_random_outputs(1, 5, "ce"), _targets([1]))


def test_the_head_decides_the_loss() -> None:
    """The head bound from the detector decides: a softmax head trains with cross-entropy, a sigmoid head with the
    varifocal loss; the matcher's class cost follows the same head and the criterion's ``focal_alpha``."""
    targets = _targets([2, 1])
    softmax, sigmoid = _random_outputs(2, 6, "ce"), _random_outputs(2, 6, "varifocal")
    ce = SetCriterion(HungarianMatcher(), focal_alpha=0.75).bind(C, sigmoid_head=False)
    assert ce.loss_type == "ce" and ce.matcher.sigmoid is False
    assert torch.equal(ce(softmax, targets)["loss_ce"], _criterion("ce")(softmax, targets)["loss_ce"])
    vfl = SetCriterion(HungarianMatcher(), focal_alpha=0.75).bind(C, sigmoid_head=True)
    assert vfl.loss_type == "varifocal" and (vfl.matcher.sigmoid, vfl.matcher.focal_alpha) == (True, 0.75)
    assert not torch.isclose(vfl(sigmoid, targets)["loss_ce"], _criterion("varifocal")(sigmoid, targets)["loss_ce"])
    with pytest.raises(ValueError, match=r"softmax head .* expects 4 logits"):
        _criterion("ce")(sigmoid, targets)


def test_bind_is_for_one_head() -> None:
    """Binding again to the same head is a no-op; to another class count or head is an error naming the key."""
    crit = _criterion("varifocal")
    assert crit.bind(C, sigmoid_head=True) is crit
    with pytest.raises(ValueError, match=r"model\.criterion: .* bound to a 'varifocal' head with 3 classes"):
        crit.bind(C + 1, sigmoid_head=True)
    with pytest.raises(ValueError, match=r"cannot serve a 'ce' head"):
        crit.bind(C, sigmoid_head=False)


def test_eos_coef_changes_ce() -> None:
    out, targets = _random_outputs(2, 6, "ce"), _targets([2, 1])
    low = _criterion("ce", eos_coef=0.1)(out, targets)["loss_ce"]
    high = _criterion("ce", eos_coef=1.0)(out, targets)["loss_ce"]
    assert not torch.isclose(low, high)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_empty_targets_everywhere(loss_type: str) -> None:
    out = _random_outputs(2, 5, loss_type, aux=1)
    out["pred_logits"].requires_grad_()
    out["pred_boxes"].requires_grad_()
    losses = _criterion(loss_type)(out, _targets([0, 0]))
    assert torch.isfinite(losses["loss"])
    assert losses["loss_bbox"] == 0 and losses["loss_giou"] == 0 and losses["loss_ce"] > 0
    losses["loss"].backward()
    assert out["pred_boxes"].grad is not None and torch.equal(out["pred_boxes"].grad, torch.zeros(2, 5, 4))
    assert out["pred_logits"].grad.abs().sum() > 0


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_learns_toy_problem(loss_type: str) -> None:
    torch.manual_seed(0)
    targets = _targets([3], seed=4)
    logits = torch.zeros(1, 8, C + (loss_type == "ce"), requires_grad=True)
    raw_boxes = torch.randn(1, 8, 4, requires_grad=True)
    criterion = _criterion(loss_type)
    opt = torch.optim.Adam([logits, raw_boxes], lr=0.1)
    history = []
    for _ in range(50):
        losses = criterion({"pred_logits": logits, "pred_boxes": raw_boxes.sigmoid()}, targets)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        history.append(losses["loss"].item())
    assert history[-1] < 0.2 * history[0]
    out = {"pred_logits": logits.detach(), "pred_boxes": raw_boxes.detach().sigmoid()}
    (src, tgt), = criterion.matcher(out, targets)
    assert (out["pred_boxes"][0, src] - targets[0]["boxes"][tgt]).abs().max() < 0.02
    probs = out["pred_logits"][0].softmax(-1) if loss_type == "ce" else out["pred_logits"][0].sigmoid()
    assert probs[src, targets[0]["labels"][tgt]].min() > 0.5  # matched queries score their class
    assert criterion(out, targets)["diag_class_error"] == 0


def test_one2many_branch_adds_keys() -> None:
    out = _random_outputs(2, 4, "varifocal", aux=1)
    out["one2many"] = _random_outputs(2, 16, "varifocal", seed=1, aux=1)
    targets = _targets([2, 1])
    losses = _criterion("varifocal", one2many_k=3)(out, targets)
    o2m = {f"{k}{s}" for k in COMPONENTS for s in ("_o2m", "_o2m_0")}
    assert o2m <= set(losses)
    plain = _criterion("varifocal", one2many_k=3)({k: v for k, v in out.items() if k != "one2many"}, targets)
    assert losses["loss"] == pytest.approx(plain["loss"].item() + sum(losses[k].item() for k in o2m), rel=1e-6)


def test_encoder_proposals_add_enc_keys() -> None:
    out = _random_outputs(2, 4, "varifocal", aux=1)
    out["enc_outputs"] = _random_outputs(2, 4, "varifocal", seed=2)
    targets = _targets([2, 1])
    losses = _criterion("varifocal")(out, targets)
    enc = {f"{k}_enc" for k in COMPONENTS}
    assert enc <= set(losses)
    plain = _criterion("varifocal")({k: v for k, v in out.items() if k != "enc_outputs"}, targets)
    assert losses["loss"] == pytest.approx(plain["loss"].item() + sum(losses[k].item() for k in enc), rel=1e-6)
    alone = _criterion("varifocal")(out["enc_outputs"], targets)  # the proposals scored like a final layer
    assert losses["loss_bbox_enc"] == pytest.approx(alone["loss_bbox"].item(), rel=1e-6)
    # One-to-many matching of the proposals: each target taken by 2 proposals, normalised by 2x the targets.
    o2m = _criterion("varifocal", enc_one2many_k=2)(out, targets)
    crit = _criterion("varifocal")
    idx = crit.matcher(out["enc_outputs"], targets, repeat=2)
    assert [len(s) for s, _ in idx] == [4, 2]
    manual = crit._layer_losses(out["enc_outputs"], targets, idx, torch.tensor(3.0 * 2), diag=False)["loss_bbox"]
    assert o2m["loss_bbox_enc"] == pytest.approx(manual.item() * 5.0, rel=1e-6)


def _ddp_worker(rank: int, tmp: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=rank, world_size=2)
    try:
        n = average_num_boxes(_targets([1] if rank == 0 else [2, 1]), torch.device("cpu"))
        torch.save(n, f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_num_boxes_averaged_across_ranks(tmp_path) -> None:
    assert average_num_boxes(_targets([0, 0]), torch.device("cpu")) == 1.0  # clamped
    mp.spawn(_ddp_worker, args=(str(tmp_path),), nprocs=2)
    assert [torch.load(tmp_path / f"rank{r}.pt").item() for r in range(2)] == [2.0, 2.0]  # (1 + 3) / 2
