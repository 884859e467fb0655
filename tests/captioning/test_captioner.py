"""Captioner: construction checks, KV-cache parity, padding invariance, loss, weight tying, a learning test."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.support.devices import on_devices
from vitkit.captioning import Captioner, CaptionTokenizer
from vitkit.core import TransformerDecoder, ViTEncoder

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: one torch thread is fastest on a shared CPU

PAD, BOS, EOS = 0, 1, 2


def tiny_captioner(enc_pos: str = "sine", enc_dim: int = 32, vocab_size: int = 16, max_length: int = 10,
                   perturb=None, **kw) -> Captioner:
    enc = ViTEncoder(patch_size=8, embed_dim=enc_dim, depth=1, num_heads=2, class_token=kw.pop("class_token", False),
                     pos_embed=enc_pos)
    dec = TransformerDecoder(dim=32, depth=2, num_heads=2, return_intermediate=False)
    model = Captioner(enc, dec, vocab_size=vocab_size, max_length=max_length, **kw).eval()
    if perturb is not None:
        perturb(model, std=0.1)
        with torch.no_grad():
            model.token_embed.weight.normal_()
    return model


def random_tokens(B: int, T: int, vocab_size: int = 16, lengths: list[int] | None = None) -> torch.Tensor:
    """(B, T) ``[BOS] content [EOS] [PAD]...`` with the given total lengths (default: all T)."""
    tokens = torch.randint(3, vocab_size, (B, T))
    tokens[:, 0] = BOS
    for b, n in enumerate(lengths or [T] * B):
        tokens[b, n - 1] = EOS
        tokens[b, n:] = PAD
    return tokens


def padded_pair() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 16 x 24 image alone, and the same image top-left in a zero-padded batch with a 32 x 40 one."""
    small, big = torch.randn(1, 3, 16, 24), torch.randn(1, 3, 32, 40)
    images = torch.zeros(2, 3, 32, 40)
    mask = torch.ones(2, 32, 40, dtype=torch.bool)
    images[0, :, :16, :24], mask[0, :16, :24] = small[0], False
    images[1], mask[1] = big[0], False
    return small, images, mask


# ------------------------------------------------------------------------------------------------ construction
def test_rejects_intermediate_decoder_and_bad_options():
    enc = ViTEncoder(patch_size=8, embed_dim=32, depth=1, num_heads=2)
    with pytest.raises(ValueError, match="return_intermediate=False"):
        Captioner(enc, TransformerDecoder(dim=32, depth=1, num_heads=2), vocab_size=10)
    dec = TransformerDecoder(dim=32, depth=1, num_heads=2, return_intermediate=False)
    with pytest.raises(ValueError, match="must differ"):
        Captioner(enc, dec, vocab_size=10, pad_id=0, bos_id=0)


def test_width_projection_and_memory_positions():
    model = tiny_captioner(enc_dim=48, class_token=True)
    assert isinstance(model.input_proj, torch.nn.Linear)
    memory, memory_mask, memory_pos = model.encode(torch.randn(2, 3, 16, 24))
    assert memory.shape == memory_pos.shape == (2, 1 + 6, 32) and memory_mask is None
    assert torch.equal(memory_pos[:, 0], torch.zeros(2, 32))  # class token: no position
    grid = model.pos_sine(torch.zeros(2, 2, 3, dtype=torch.bool)).reshape(2, 6, 32)  # (B, h*w, D) of the 2 x 3 grid
    assert torch.equal(memory_pos[:, 1:], grid)  # the grid tokens: 2D sine positions
    assert model(torch.randn(2, 3, 16, 24), random_tokens(2, 5)).shape == (2, 5, 16)
    assert isinstance(tiny_captioner().input_proj, torch.nn.Identity)  # same width: no projection


def test_learned_positions_limit_length():
    model = tiny_captioner(max_length=6)
    with pytest.raises(ValueError, match="max_length=6"):
        model(torch.randn(1, 3, 16, 16), random_tokens(1, 7))


# -------------------------------------------------------------------------------------------------- KV cache
def test_incremental_decoding_matches_teacher_forcing(perturb):
    model = tiny_captioner(perturb=perturb)
    _, images, mask = padded_pair()  # memory padding on row 0
    tokens = random_tokens(2, 8)
    with torch.no_grad():
        full = model(images, tokens, mask)  # (B, T, V)
        memory, memory_mask, memory_pos = model.encode(images, mask)
        assert memory_mask is not None and memory_mask[0].any()
        state = model.init_state(memory, memory_mask, memory_pos)
        steps = [model.step(tokens[:, t], state) for t in range(8)]
        state = model.init_state(memory, memory_mask, memory_pos)  # a 3-token prompt, then one at a time
        chunked = [model.step(tokens[:, :3], state)] + [model.step(tokens[:, t], state) for t in range(3, 8)]
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.stack(chunked, 1), full[:, 2:], atol=1e-5, rtol=0)
    assert state.length == 8 and state.caches[0][0].length == 8


def test_state_reorder_selects_rows(perturb):
    model = tiny_captioner(perturb=perturb)
    images = torch.randn(3, 3, 16, 24)
    tokens = random_tokens(3, 4)
    with torch.no_grad():
        memory, memory_mask, memory_pos = model.encode(images)
        state = model.init_state(memory, memory_mask, memory_pos)
        model.step(tokens[:, :3], state)
        index = torch.tensor([2, 0, 0, 1])
        state.reorder(index)
        logits = model.step(tokens[index, 3], state)
        full = model(images[index], tokens[index])[:, 3]
    torch.testing.assert_close(logits, full, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------ padding invariance
@on_devices
@pytest.mark.parametrize("enc_pos", ["sine", "rope", "learned"])
def test_padding_invariance(enc_pos, perturb, device):
    model = tiny_captioner(enc_pos=enc_pos, perturb=perturb).to(device)
    small, images, mask = (t.to(device) for t in padded_pair())
    tokens = random_tokens(2, 6).to(device)
    with torch.no_grad():
        alone, batched = model(small, tokens[:1]), model(images, tokens, mask)[:1]
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    for method in ("greedy", "beam"):
        ids_alone, score_alone = model.generate(small, method=method)
        ids, scores = model.generate(images, mask, method=method)
        assert ids[0, : ids_alone.shape[1]].tolist() == ids_alone[0].tolist()
        assert (ids[0, ids_alone.shape[1]:] == PAD).all()
        assert scores[0].item() == pytest.approx(score_alone.item(), abs=1e-4)


# ------------------------------------------------------------------------------------------ loss and weights
def test_loss_ignores_padding_and_smooths_labels():
    model = tiny_captioner(label_smoothing=0.1)
    tokens = random_tokens(2, 7, lengths=[7, 4])
    logits = torch.randn(2, 7, 16)
    loss = model.loss(logits, tokens)
    garbage = logits.clone()
    garbage[1, 3:] = torch.randn(4, 16) * 100  # predictions of pad targets (and after the last one)
    assert model.loss(garbage, tokens) == pytest.approx(loss.item(), rel=1e-6)
    pred = torch.cat((logits[0, :6], logits[1, :3]))  # the 6 + 3 real next-token predictions
    target = torch.cat((tokens[0, 1:], tokens[1, 1:4]))
    assert loss.item() == pytest.approx(F.cross_entropy(pred, target, label_smoothing=0.1).item(), rel=1e-6)
    assert PAD not in target.tolist()


def test_tied_weights_share_storage():
    tied = tiny_captioner()
    assert tied.lm_head.weight.data_ptr() == tied.token_embed.weight.data_ptr()
    assert sum(p.numel() for p in tied.parameters()) == sum(p.numel() for p in set(tied.parameters()))
    with torch.no_grad():
        tied.token_embed.weight[5] += 1.0
    assert torch.equal(tied.lm_head.weight[5], tied.token_embed.weight[5])
    clone = tiny_captioner()
    clone.load_state_dict(tied.state_dict())
    assert clone.lm_head.weight.data_ptr() == clone.token_embed.weight.data_ptr()
    assert torch.equal(clone.lm_head.weight, tied.token_embed.weight)
    assert torch.equal(tied.lm_head.weight[PAD], torch.zeros(32))  # the padding row starts at zero


# -------------------------------------------------------------------------------------------------- learning
@pytest.mark.slow  # learns: the full suite runs it, the fast tier leaves it out
def test_memorises_captions_of_solid_colour_images():
    colours = {"red": (1.0, -1.0, -1.0), "green": (-1.0, 1.0, -1.0), "blue": (-1.0, -1.0, 1.0),
               "white": (1.0, 1.0, 1.0)}
    captions = [f"A {name} image." if i % 2 else f"a {name} square" for i, name in enumerate(colours)]
    tok = CaptionTokenizer.train(captions, model="wordlevel")
    images = torch.tensor(list(colours.values())).view(4, 3, 1, 1).expand(4, 3, 16, 16).contiguous()
    tokens = tok.encode_batch(captions, max_length=8)
    torch.manual_seed(0)
    enc = ViTEncoder(patch_size=8, embed_dim=32, depth=1, num_heads=2, class_token=False, pos_embed="sine")
    dec = TransformerDecoder(dim=32, depth=2, num_heads=2, return_intermediate=False)
    model = Captioner(enc, dec, tok.vocab_size, max_length=8, pad_id=tok.pad_id, bos_id=tok.bos_id,
                      eos_id=tok.eos_id, label_smoothing=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for _ in range(300):  # ~160 steps to reach the threshold
        loss = model.loss(model(images, tokens), tokens)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.01:
            break
    model.eval()
    for method in ("greedy", "beam"):
        ids, _ = model.generate(images, method=method)
        assert tok.decode_batch(ids) == [tok.normalize(c) for c in captions], method
