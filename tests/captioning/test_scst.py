"""Self-critical sequence training: baselines, the loss's gradient sign, masking, and learning a reward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.support.configs import build_module
from vitkit.captioning import CaptionTokenizer
from vitkit.captioning.module import CaptionModule
from vitkit.captioning.scst import (
    baseline_rewards,
    caption_rewards,
    policy_gradient_loss,
    reward_corpus,
    scst_step,
    sequence_log_probs,
)

LINKS = {"vocab_size": 12, "pad_id": 0, "bos_id": 1, "eos_id": 2, "max_length": 8}
TINY_ENCODER = {"stem_channels": [8, 16], "stem_depths": [0, 0], "embed_dim": 32, "depth": 1, "num_heads": 2}
TINY_DECODER = {"dim": 32, "depth": 1, "num_heads": 2}


def _captioner():
    """The shipped recipe's captioner at a tiny size (without the training-only object head)."""
    torch.manual_seed(0)
    return build_module("caption_shapes.yaml", CaptionModule, LINKS, TINY_ENCODER, TINY_DECODER,
                        object_classes=None).captioner.train()


def test_mean_baseline_is_the_other_samples_mean():
    r = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])
    expected = torch.tensor([[4.0, 3.5, 1.5], [1.5, 1.5, 0.0]])
    torch.testing.assert_close(baseline_rewards(r), expected)
    with pytest.raises(ValueError, match="at least 2"):
        baseline_rewards(r[:, :1])


def test_gradient_step_prefers_the_caption_above_the_baseline():
    """Two captions of one image: A scores above the baseline, B below. One SGD step on the SCST loss raises
    log p(A) and lowers log p(B)."""
    cap = _captioner()
    images = torch.randn(1, 3, 64, 64)
    seqs = torch.tensor([[1, 5, 6, 7, 2, 0], [1, 8, 9, 2, 0, 0]])  # A, B: [BOS] tokens [EOS] [PAD]
    rewards = torch.tensor([[1.5, 0.5]])  # (B=1, k=2): the mean baseline is the other sample's reward
    advantage = (rewards - baseline_rewards(rewards)).view(-1)  # (+1, -1)

    def logp() -> torch.Tensor:
        memory, mmask, mpos = cap.encode(images.expand(2, -1, -1, -1))
        token_logp = sequence_log_probs(cap.decode_tokens(seqs, memory, mmask, mpos), seqs, (0, 1))
        return token_logp, seqs[:, 1:] != 0

    token_logp, mask = logp()
    before = token_logp.masked_fill(~mask, 0).sum(dim=1).detach()
    policy_gradient_loss(token_logp, mask, advantage).backward()
    with torch.no_grad():
        for p in cap.parameters():
            if p.grad is not None:
                p -= 0.05 * p.grad
    token_logp, mask = logp()
    after = token_logp.masked_fill(~mask, 0).sum(dim=1).detach()
    assert after[0] > before[0] and after[1] < before[1], (before, after)


def test_padding_after_eos_contributes_nothing():
    """PAD is impossible under the policy (log p = -inf): padded positions must not turn the loss into NaN."""
    logits = torch.randn(2, 5, 12, requires_grad=True)
    seqs = torch.tensor([[1, 4, 2, 0, 0], [1, 4, 5, 6, 2]])
    token_logp = sequence_log_probs(logits, seqs, (0, 1))
    assert torch.isinf(token_logp[0, 2:]).all()
    mask = seqs[:, 1:] != 0
    loss = policy_gradient_loss(token_logp, mask, torch.tensor([1.0, -1.0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    # only the 2 + 4 real targets count: their mean
    expected = -(token_logp[0, :2].sum() - token_logp[1].sum()) / 6
    torch.testing.assert_close(loss, expected)


def test_scst_learns_a_reward():
    """A reward for the share of token 5 in a caption: a few SCST steps make token 5 more likely."""
    cap = _captioner()
    images = torch.randn(2, 3, 64, 64)
    gen = torch.Generator().manual_seed(0)

    def reward(ids: torch.Tensor, keys) -> np.ndarray:
        body = ids[:, 1:]
        real = (body != 0) & (body != 2)
        return ((body == 5) & real).sum(1).numpy() / real.sum(1).clamp(min=1).numpy()

    def expected_reward() -> float:  # estimated from 8 samples per image
        cap.eval()
        ids, _ = cap.generate(images.repeat(8, 1, 1, 1), method="sample", generator=gen)
        cap.train()
        return float(reward(ids, None).mean())

    start = expected_reward()
    opt = torch.optim.Adam(cap.parameters(), lr=3e-3)
    for _ in range(25):
        out = scst_step(cap, images, None, [0, 1], reward, samples=4)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    end = expected_reward()
    assert end > start + 0.3, (start, end)


def test_scst_step_under_bf16_autocast():
    """bf16-mixed: sampling and the teacher-forced pass run under autocast; the loss and gradients stay finite fp32."""
    cap = _captioner()
    images = torch.randn(2, 3, 64, 64)
    calls = []

    def reward(ids: torch.Tensor, keys) -> np.ndarray:
        calls.append(list(keys))
        return (ids[:, 1:] == 5).sum(1).numpy().astype(float)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = scst_step(cap, images, None, ["a", "b"], reward, samples=3)
    out.loss.backward()
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert calls == [["a"] * 3 + ["b"] * 3]  # the samples, image by image
    grads = [p.grad for p in cap.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_reward_pays_for_a_complete_ending():
    """The end word: a caption cut short loses the n-grams of its references' ending; one that ran to max_length
    (no EOS) gets no end word, and its reward is CIDEr-D of its words alone."""
    refs = {1: ["A green square on a gray background.", "a single green square on a gray background"],
            2: ["a red circle on a brown background", "a red circle"], 3: ["two shapes on a beige background"]}
    texts = [c for rs in refs.values() for c in rs] + ["a green square on a gray"]
    tok = CaptionTokenizer.train(texts, vocab_size=60, model="wordlevel")
    cider = reward_corpus(refs)
    ended = tok.encode_batch(["a green square on a gray background", "a green square on a gray"], max_length=12)
    full, cut = caption_rewards(cider, tok, ended, [1, 1])
    assert full > cut > 0
    truncated = torch.tensor([[tok.bos_id, *tok.encode("a green square on")]])  # sampling stopped at max_length
    expected = cider.score(["a green square on"], [1])
    np.testing.assert_allclose(caption_rewards(cider, tok, truncated, [1]), expected)
    assert "background <eos>" in " ".join(" ".join(g) for g in cider.document_frequency)  # references end with it
