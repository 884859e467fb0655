"""Caption decoding: greedy, beam search and sampling against cache-free references and exhaustive search."""

from __future__ import annotations

import itertools

import pytest
import torch

from vitkit.captioning import Captioner
from vitkit.captioning.decoding import beam_search, filter_logits, ngram_bans
from vitkit.core import TransformerDecoder, ViTEncoder

PAD, BOS, EOS = 0, 1, 2

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: one torch thread is fastest on a shared CPU


def random_captioner(vocab_size: int = 12, max_length: int = 8, seed: int = 0, param_std: float = 0.2,
                     logit_std: float = 1.0) -> Captioner:
    """A tiny untrained captioner with spread-out logits (varied tokens, EOS at different steps): the searches' test
    subject, with an output projection of its own (a tied one makes random captions repeat their last token)."""
    torch.manual_seed(seed)
    enc = ViTEncoder(patch_size=8, embed_dim=32, depth=1, num_heads=2, class_token=False, pos_embed="sine")
    dec = TransformerDecoder(dim=32, depth=2, num_heads=2, return_intermediate=False)
    model = Captioner(enc, dec, vocab_size=vocab_size, max_length=max_length).eval()
    model.lm_head = torch.nn.Linear(32, vocab_size, bias=False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * param_std)
        model.token_embed.weight.normal_()
        model.lm_head.weight.normal_(std=logit_std)
    return model


def allowed_logprobs(logits: torch.Tensor) -> torch.Tensor:
    """Reference: log-softmax over every token except PAD and BOS (never generated)."""
    logits = logits.float().clone()
    logits[..., [PAD, BOS]] = float("-inf")
    return logits.log_softmax(dim=-1)


def reference_greedy(model: Captioner, images: torch.Tensor, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding by re-running the full teacher-forced forward (no cache) for every token."""
    B = images.shape[0]
    seqs = torch.full((B, 1), BOS)
    scores = torch.zeros(B)
    done = torch.zeros(B, dtype=torch.bool)
    with torch.no_grad():
        while seqs.shape[1] < max_length and not done.all():
            logp = allowed_logprobs(model(images, seqs)[:, -1])  # (B, V)
            nxt = torch.where(done, PAD, logp.argmax(-1))
            scores += torch.where(done, 0.0, logp.gather(1, nxt[:, None]).squeeze(1))
            seqs = torch.cat((seqs, nxt[:, None]), dim=1)
            done |= nxt == EOS
    return seqs, scores


# ------------------------------------------------------------------------------------------------ token rules
def test_ngram_bans():
    seqs = torch.tensor([[1, 3, 4, 5, 3, 4], [1, 3, 4, 5, 6, 7]])
    assert ngram_bans(seqs, 3, 8)[0].nonzero().flatten().tolist() == [5]  # (3, 4) -> 5 seen before
    assert not ngram_bans(seqs, 3, 8)[1].any()
    assert ngram_bans(seqs, 2, 8)[0].nonzero().flatten().tolist() == [5]  # (4) -> 5
    assert ngram_bans(seqs, 1, 8)[1].nonzero().flatten().tolist() == [1, 3, 4, 5, 6, 7]
    assert not ngram_bans(seqs, 0, 8).any() and not ngram_bans(seqs[:, :2], 3, 8).any()


def test_filter_logits_top_k_top_p():
    logits = torch.tensor([[0.1, 0.6, 0.3]]).log()
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[True, False, False]]
    assert torch.isinf(filter_logits(logits, top_p=0.55)).tolist() == [[True, False, True]]  # 0.6 >= 0.55
    assert torch.isinf(filter_logits(logits, top_p=0.65)).tolist() == [[True, False, False]]
    assert torch.equal(filter_logits(logits), logits)


# ------------------------------------------------------------------------------------------------------ greedy
def test_greedy_equals_argmax_of_full_forward():
    model = random_captioner()
    images = torch.randn(4, 3, 16, 24)
    ids, scores = model.generate(images, method="greedy")
    ref_ids, ref_scores = reference_greedy(model, images, model.max_length)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(scores, ref_scores, atol=1e-4, rtol=1e-5)
    lengths = (ids != PAD).sum(1)  # this seed's captions end at different steps: padding after EOS is exercised
    assert lengths.min() < lengths.max() and (ids == EOS).any()


def test_every_method_feeds_one_token_per_step_and_encodes_memory_once():
    model = random_captioner()
    images = torch.randn(2, 3, 16, 24)
    fed, cross_rows = [], []
    step = model.step
    model.step = lambda tokens, state: fed.append(tokens.shape) or step(tokens, state)
    for layer in model.decoder.layers:
        project = layer.cross_attn._project

        def counting(q, k, v, project=project):
            if k is not None:  # keys/values projected (not read from the static cache)
                cross_rows.append(k.shape[0])
            return project(q, k, v)

        layer.cross_attn._project = counting
    for method in ("greedy", "beam", "sample"):
        fed.clear(), cross_rows.clear()
        model.generate(images, method=method, num_beams=3)
        assert all(len(shape) == 1 for shape in fed), method
        assert cross_rows == [2] * model.decoder.depth, method  # once per image and layer, before beams


# ------------------------------------------------------------------------------------------------- beam search
def test_beam_one_equals_greedy():
    model = random_captioner()
    images = torch.randn(4, 3, 16, 24)
    g_ids, g_scores = model.generate(images, method="greedy")
    b_ids, b_scores = model.generate(images, method="beam", num_beams=1, length_penalty=0.0)
    assert torch.equal(b_ids, g_ids)
    torch.testing.assert_close(b_scores, g_scores, atol=1e-5, rtol=1e-5)
    # With a length penalty one beam keeps searching after greedy's EOS and can only do better.
    b_ids, b_scores = model.generate(images, method="beam", num_beams=1, length_penalty=1.0)
    g_norm = g_scores / ((g_ids != PAD).sum(1) - 1)
    assert (b_scores >= g_norm - 1e-5).all()


def exhaustive_best(model: Captioner, image: torch.Tensor, max_length: int, length_penalty: float,
                    min_length: int = 0) -> tuple[list[int], float]:
    """Score every possible caption of a tiny vocabulary with the full forward and return the best."""
    content = [t for t in range(model.vocab_size) if t not in (PAD, BOS, EOS)]
    hyps = [[*c, EOS] for n in range(min_length, max_length - 1) for c in itertools.product(content, repeat=n)]
    hyps += [list(c) for c in itertools.product(content, repeat=max_length - 1)]  # cut by the length limit
    seqs = torch.tensor([[BOS, *h] + [PAD] * (max_length - 1 - len(h)) for h in hyps])  # (S, max_length)
    with torch.no_grad():
        logits = model(image.expand(len(hyps), -1, -1, -1), seqs)[:, :-1]  # (S, L-1, V)
    logits = logits.clone()
    logits[:, :min_length, EOS] = float("-inf")  # EOS forbidden before min_length tokens
    logp = allowed_logprobs(logits).gather(2, seqs[:, 1:, None]).squeeze(2)  # (S, L-1)
    best, best_score = None, float("-inf")
    for i, h in enumerate(hyps):
        score = logp[i, : len(h)].sum().item() / len(h) ** length_penalty
        if score > best_score:
            best, best_score = [BOS, *h], score
    return best, best_score


@pytest.mark.parametrize("length_penalty,min_length", [(0.0, 0), (1.0, 0), (2.0, 0), (-0.5, 0), (1.0, 2)])
def test_beam_search_matches_exhaustive_search(length_penalty, min_length):
    # 3 content tokens, at most 4 generated: 27 beams keep every live prefix, so the search is exact.
    model = random_captioner(vocab_size=6, max_length=5, seed=1, logit_std=0.2)
    images = torch.randn(3, 3, 16, 24)
    ids, scores = model.generate(images, method="beam", num_beams=27, length_penalty=length_penalty,
                                 min_length=min_length)
    for b in range(3):
        best, best_score = exhaustive_best(model, images[b: b + 1], 5, length_penalty, min_length)
        assert [t for t in ids[b].tolist() if t != PAD] == best
        assert scores[b].item() == pytest.approx(best_score, abs=1e-5)


def reference_beam(model: Captioner, image: torch.Tensor, num_beams: int, max_length: int,
                   length_penalty: float) -> tuple[list[int], float]:
    """Beam search without cache, batching or early stopping: every image runs to max_length."""
    live, finished = [([BOS], 0.0)], []
    for t in range(1, max_length):
        with torch.no_grad():
            logp = allowed_logprobs(model(image.expand(len(live), -1, -1, -1), torch.tensor([s for s, _ in live])))
        candidates = []
        for (seq, score), row in zip(live, logp[:, -1].tolist(), strict=True):
            finished.append(([*seq, EOS], (score + row[EOS]) / t**length_penalty))
            candidates += [([*seq, tok], score + lp) for tok, lp in enumerate(row) if tok != EOS and lp > -1e30]
        live = sorted(candidates, key=lambda c: -c[1])[:num_beams]
    finished += [(seq, score / (max_length - 1) ** length_penalty) for seq, score in live]
    return max(finished, key=lambda c: c[1])


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 3.0, -1.0])
def test_beam_search_matches_reference_and_stops_early_exactly(length_penalty):
    """Cache, beam re-ranking, dropping finished images and the stopping rule change nothing."""
    model = random_captioner(logit_std=0.5)
    images = torch.randn(4, 3, 16, 24)
    ids, scores = model.generate(images, method="beam", num_beams=3, length_penalty=length_penalty)
    for b in range(4):
        best, best_score = reference_beam(model, images[b: b + 1], 3, model.max_length, length_penalty)
        assert [t for t in ids[b].tolist() if t != PAD] == best
        assert scores[b].item() == pytest.approx(best_score, abs=1e-5)


class PrefixLM:
    """A stand-in for the Captioner's step interface whose next-token logits are a fixed function of (image,
    whole prefix): random (``scale``, ``eos_bias``) or scripted, ``script[prefix] = {token: probability}``.
    Its state follows ``reorder`` like KV caches do, so a search that loses track of rows gets other logits."""

    pad_id, bos_id, eos_id = PAD, BOS, EOS

    def __init__(self, vocab_size: int = 8, seed: int = 0, scale: float = 2.0, eos_bias: float = 0.0,
                 script: dict[tuple[int, ...], dict[int, float]] | None = None) -> None:
        self.vocab_size, self.seed, self.scale, self.eos_bias, self.script = vocab_size, seed, scale, eos_bias, script

    def logits(self, image: int, prefix: tuple[int, ...]) -> torch.Tensor:
        if self.script is not None:
            x = torch.full((self.vocab_size,), -30.0)  # unlisted tokens: probability ~1e-13
            for tok, prob in self.script.get(prefix, {EOS: 1.0}).items():
                x[tok] = float(torch.tensor(prob).log())
            return x
        gen = torch.Generator().manual_seed(hash((self.seed, image, *prefix)) % 2**62)
        x = torch.randn(self.vocab_size, generator=gen) * self.scale
        x[EOS] += self.eos_bias
        return x

    class State:
        def __init__(self, images: list[int]) -> None:
            self.images, self.prefixes = images, [[] for _ in images]

        def reorder(self, index: torch.Tensor, cross: bool = True) -> None:
            self.prefixes = [list(self.prefixes[i]) for i in index.tolist()]
            if cross:
                self.images = [self.images[i] for i in index.tolist()]

    def init_state(self, memory, memory_mask=None, memory_pos=None) -> PrefixLM.State:
        return self.State(memory[:, 0, 0].long().tolist())  # memory carries the image id

    def step(self, tokens: torch.Tensor, state: PrefixLM.State) -> torch.Tensor:
        assert tokens.dim() == 1
        for prefix, tok in zip(state.prefixes, tokens.tolist(), strict=True):
            prefix.append(tok)
        return torch.stack([self.logits(i, tuple(p)) for i, p in zip(state.images, state.prefixes, strict=True)])


def prefix_lm_reference(lm: PrefixLM, image: int, num_beams: int, max_length: int,
                        length_penalty: float) -> tuple[list[int], float]:
    """Per-image beam search over a PrefixLM without early stopping (fp64)."""
    live, finished = [([BOS], 0.0)], []
    for t in range(1, max_length):
        candidates = []
        for seq, score in live:
            x = lm.logits(image, tuple(seq)).double()
            x[[PAD, BOS]] = float("-inf")
            row = x.log_softmax(0).tolist()
            finished.append(([*seq, EOS], (score + row[EOS]) / t**length_penalty))
            candidates += [([*seq, tok], score + lp) for tok, lp in enumerate(row) if tok != EOS and lp > -1e30]
        live = sorted(candidates, key=lambda c: -c[1])[:num_beams]
    finished += [(seq, score / (max_length - 1) ** length_penalty) for seq, score in live]
    return max(finished, key=lambda c: c[1])


def image_ids(n: int) -> torch.Tensor:
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1).expand(n, 2, 4)  # (B, N, D) "memory"


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, -1.0])
def test_beam_search_bookkeeping_on_random_prefix_models(length_penalty):
    """Re-ranking, per-image pools, dropping finished images and early stopping against a plain reference."""
    for seed in range(10):
        lm = PrefixLM(seed=seed, eos_bias=float(seed % 2))
        ids, scores = beam_search(lm, image_ids(6), num_beams=3, max_length=8, length_penalty=length_penalty)
        for b in range(6):
            best, best_score = prefix_lm_reference(lm, b, 3, 8, length_penalty)
            assert [t for t in ids[b].tolist() if t != PAD] == best, (seed, b)
            assert scores[b].item() == pytest.approx(best_score, abs=1e-5)


@pytest.mark.parametrize("length_penalty,expected", [
    # lp = 1: [BOS, EOS] scores log 0.8 = -0.22; the live beam (log 0.2 = -1.61 so far) can still reach
    # -1.61 / 8 = -0.20 by going on with certain tokens, so the search must not stop at step 1.
    (1.0, [BOS, *[3] * 7, EOS]),
    # lp = -1 (score = sum * length): [BOS, EOS] scores log 0.3 = -1.20 and the live beam, at log 0.7 = -0.36,
    # can end at the next step with -0.71; a bound taken at the longest length (-3.2) would stop too soon.
    (-1.0, [BOS, 3, EOS]),
])
def test_beam_search_stops_only_when_no_live_beam_can_win(length_penalty, expected):
    if length_penalty > 0:
        script = {(BOS,): {EOS: 0.8, 3: 0.2}, **{(BOS, *[3] * k): {3: 1.0} for k in range(1, 7)}}
    else:
        script = {(BOS,): {EOS: 0.3, 3: 0.7}}
    lm = PrefixLM(script=script)
    ids, scores = beam_search(lm, image_ids(1), num_beams=1, max_length=10, length_penalty=length_penalty)
    assert ids[0].tolist() == expected
    assert scores[0].item() == pytest.approx(prefix_lm_reference(lm, 0, 1, 10, length_penalty)[1], abs=1e-5)


def test_beam_search_is_batch_invariant():
    """Each image gets the caption it gets alone, while other images finish earlier or later."""
    model = random_captioner()
    images = torch.randn(4, 3, 16, 24)
    ids, scores = model.generate(images, method="beam", num_beams=3, max_length=8)
    for b in range(4):
        one_ids, one_score = model.generate(images[b: b + 1], method="beam", num_beams=3, max_length=8)
        assert ids[b, : one_ids.shape[1]].tolist() == one_ids[0].tolist()
        assert (ids[b, one_ids.shape[1]:] == PAD).all()
        assert scores[b].item() == pytest.approx(one_score.item(), abs=1e-5)


def test_beam_search_returns_finished_hypotheses():
    model = random_captioner()
    memory, memory_mask, memory_pos = model.encode(torch.randn(2, 3, 16, 24))
    with torch.no_grad():
        ids, scores = beam_search(model, memory, memory_mask, memory_pos, num_beams=4, max_length=8)
    assert ids.shape[0] == 2 and ids.shape[1] <= 8 and (ids[:, 0] == BOS).all()
    assert torch.isfinite(scores).all() and (scores <= 0).all()
    for row in ids.tolist():
        body = row[1: len(row) - row.count(PAD)]  # BOS and right padding removed
        assert PAD not in body and BOS not in body and EOS not in body[:-1]


# ------------------------------------------------------------------------------------------- constraints
@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_no_repeat_ngram(method):
    model = random_captioner(param_std=0.02)  # nearly image-blind: loops over the same few tokens
    images = torch.randn(3, 3, 16, 24)
    kw = dict(method=method, max_length=8, num_beams=3, generator=torch.Generator().manual_seed(0))

    def bigrams(row: list[int]) -> list[tuple[int, int]]:
        row = [t for t in row if t != PAD]
        return list(itertools.pairwise(row))

    plain, _ = model.generate(images, **kw)
    if method == "greedy":  # the constraint has something to do
        assert any(len(set(bigrams(r))) < len(bigrams(r)) for r in plain.tolist())
    kw["generator"] = torch.Generator().manual_seed(0)
    ids, _ = model.generate(images, no_repeat_ngram_size=2, **kw)
    for row in ids.tolist():
        assert len(set(bigrams(row))) == len(bigrams(row)), row


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_min_length(method):
    model = random_captioner()
    with torch.no_grad():  # final states ~ 3u + small: EOS (weight 5u) scores ~15, the others (orthogonal to u) ~0
        u = torch.nn.functional.normalize(torch.randn(32), dim=0)
        model.decoder.norm.weight.mul_(0.1)
        model.decoder.norm.bias.copy_(3 * u)
        W = model.lm_head.weight
        W.sub_((W @ u)[:, None] * u)
        W[EOS] = 5 * u
    images = torch.randn(3, 3, 16, 24)
    kw = dict(method=method, num_beams=3, generator=torch.Generator().manual_seed(0))
    ids, _ = model.generate(images, **kw)
    assert (ids[:, 1] == EOS).all()  # without the constraint the caption is empty
    ids, _ = model.generate(images, min_length=3, **kw)
    for row in ids.tolist():
        assert EOS not in row[:4], row
        assert EOS in row


def _eos_biased(model: Captioner, eos_weight: float) -> Captioner:
    """Final states ~ 3u: EOS scores ~3 * eos_weight, every other token ~0 (their rows are orthogonal to u)."""
    with torch.no_grad():
        u = torch.nn.functional.normalize(torch.randn(32), dim=0)
        model.decoder.norm.weight.mul_(0.1)
        model.decoder.norm.bias.copy_(3 * u)
        W = model.lm_head.weight
        W.sub_((W @ u)[:, None] * u)
        W[EOS] = eos_weight * u
    return model


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_eos_at_step_1_gives_an_empty_caption(method):
    model = _eos_biased(random_captioner(), 5.0)
    ids, scores = model.generate(torch.randn(3, 3, 16, 24), method=method, num_beams=3,
                                 generator=torch.Generator().manual_seed(0))
    assert ids.tolist() == [[BOS, EOS]] * 3  # BOS, EOS and nothing after: the batch is trimmed to 2 columns
    assert torch.isfinite(scores).all() and (scores <= 0).all()


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
@pytest.mark.parametrize("max_length", [2, 5])
def test_max_length_stops_a_caption_that_never_ends(method, max_length):
    model = _eos_biased(random_captioner(), -5.0)  # EOS is never likely
    ids, scores = model.generate(torch.randn(3, 3, 16, 24), method=method, num_beams=3, max_length=max_length,
                                 generator=torch.Generator().manual_seed(0))
    assert ids.shape == (3, max_length)  # BOS + max_length - 1 tokens, cut without EOS
    assert (ids[:, 0] == BOS).all()
    assert not (ids[:, 1:] == EOS).any() and not (ids[:, 1:] == PAD).any()
    assert torch.isfinite(scores).all()


# ---------------------------------------------------------------------------------------------------- sampling
def test_sampling_top_k_one_is_greedy_and_seeded():
    model = random_captioner()
    images = torch.randn(4, 3, 16, 24)
    g_ids, g_scores = model.generate(images, method="greedy")
    s_ids, s_scores = model.generate(images, method="sample", top_k=1, temperature=2.0)
    assert torch.equal(s_ids, g_ids) and torch.allclose(s_scores, g_scores)
    p_ids, _ = model.generate(images, method="sample", top_p=1e-6)
    assert torch.equal(p_ids, g_ids)

    def sample(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return model.generate(images.repeat(4, 1, 1, 1), method="sample", temperature=2.0, generator=gen)[0]

    assert torch.equal(sample(0), sample(0))
    assert not torch.equal(sample(0), sample(1))


def test_invalid_arguments():
    model = random_captioner()
    images = torch.randn(1, 3, 16, 24)
    with pytest.raises(ValueError, match="method"):
        model.generate(images, method="nucleus")
    with pytest.raises(ValueError, match="temperature"):
        model.generate(images, method="sample", temperature=0.0)
    with pytest.raises(ValueError, match="position table"):
        model.generate(images, max_length=model.max_length + 1)
