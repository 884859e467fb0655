"""Caption search: greedy, beam search and sampling over a cached one-token-per-step decoder.

Sequences are ``[BOS] tokens [EOS]``, right-padded with PAD, at most ``max_length`` ids (BOS and EOS count;
one reaching ``max_length`` ends without EOS). PAD and BOS are never generated; EOS is forbidden until
``min_length`` tokens follow BOS; ``no_repeat_ngram_size=n`` forbids completing a repeated n-gram.
Scores: sum of the generated tokens' log-probabilities (EOS included, renormalised over allowed tokens);
beam search divides by ``length ** length_penalty``.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor


class Stepper(Protocol):
    """What the search functions need from a model (the Captioner's incremental interface)."""
    pad_id: int
    bos_id: int
    eos_id: int

    def init_state(self, memory: Tensor, memory_mask: Tensor | None = None, memory_pos: Tensor | None = None): ...

    def step(self, tokens: Tensor, state) -> Tensor: ...


# ----------------------------------------------------------------------------------------------- token rules
def ngram_bans(seqs: Tensor, n: int, vocab_size: int) -> Tensor:
    """(R, V) bool, True where appending the token to (R, L) ``seqs`` would repeat an n-gram (n <= 0: none)."""
    R, L = seqs.shape
    ban = torch.zeros(R, vocab_size, dtype=torch.bool, device=seqs.device)
    if n <= 0 or n > L:
        return ban
    windows = seqs.unfold(1, n, 1)  # (R, L-n+1, n)
    prefix = seqs[:, L - n + 1:]  # (R, n-1) the last n-1 tokens
    match = (windows[:, :, :-1] == prefix[:, None, :]).all(dim=-1)  # (R, L-n+1)
    hits = torch.zeros(R, vocab_size, device=seqs.device).scatter_add_(1, windows[:, :, -1], match.float())
    return hits > 0


def token_bans(model: Stepper, seqs: Tensor, vocab_size: int, min_length: int, no_repeat_ngram_size: int) -> Tensor:
    """(R, L) sequences so far -> (R, V) bool, True = the next token may not be this one."""
    ban = ngram_bans(seqs, no_repeat_ngram_size, vocab_size)
    ban[:, [model.pad_id, model.bos_id]] = True
    if seqs.shape[1] - 1 < min_length:
        ban[:, model.eos_id] = True
    return ban


def masked_log_softmax(logits: Tensor, ban: Tensor) -> Tensor:
    """(R, V) logits -> fp32 log-probabilities renormalised over allowed tokens (-inf where banned)."""
    x = logits.float().masked_fill(ban, float("-inf"))
    lse = x.logsumexp(dim=-1, keepdim=True)  # (R, 1), -inf when everything is banned
    return x - lse.masked_fill(lse == float("-inf"), 0.0)


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Top-k and nucleus (top-p) filtering: (R, V) logits with the tokens outside the kept set at -inf."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (R, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (R, V)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        drop = mass_before >= top_p
        drop[:, 0] = False
        logits = logits.scatter(1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return logits


# ------------------------------------------------------------------------------------- greedy and sampling
def _sequential(model: Stepper, memory: Tensor, memory_mask: Tensor | None, memory_pos: Tensor | None,
                choose, max_length: int, min_length: int, no_repeat_ngram_size: int) -> tuple[Tensor, Tensor]:
    """One token per row per step until every row has produced EOS or max_length is reached."""
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (BOS and one token), got {max_length}")
    B = memory.shape[0]
    state = model.init_state(memory, memory_mask, memory_pos)
    seqs = torch.full((B, 1), model.bos_id, dtype=torch.long, device=memory.device)  # (B, 1)
    done = torch.zeros(B, dtype=torch.bool, device=memory.device)
    scores = torch.zeros(B, device=memory.device)
    for _ in range(max_length - 1):
        logits = model.step(seqs[:, -1], state).float()  # (B, V)
        ban = token_bans(model, seqs, logits.shape[-1], min_length, no_repeat_ngram_size)
        logp = masked_log_softmax(logits, ban)  # (B, V)
        nxt = choose(logits, ban, logp)  # (B,)
        nxt = torch.where(ban.all(dim=-1), model.eos_id, nxt)  # nothing allowed: end the row
        nxt = torch.where(done, model.pad_id, nxt)
        scores = scores + torch.where(done, 0.0, logp.gather(1, nxt[:, None]).squeeze(1))
        seqs = torch.cat((seqs, nxt[:, None]), dim=1)  # (B, L+1)
        done = done | (nxt == model.eos_id)
        if done.all():
            break
    return seqs, scores


@torch.no_grad()
def greedy_decode(model: Stepper, memory: Tensor, memory_mask: Tensor | None = None,
                  memory_pos: Tensor | None = None, *, max_length: int, min_length: int = 0,
                  no_repeat_ngram_size: int = 0) -> tuple[Tensor, Tensor]:
    """Most likely allowed token at every step.

    Args:
        model: the step interface (a Captioner).
        memory: (B, N, D); memory_mask: (B, N) True = padding, or None; memory_pos: (B, N, D), or None.

    Returns:
        ids (B, T) right-padded with PAD, T <= max_length; scores (B,) sum of log-probabilities.
    """
    return _sequential(model, memory, memory_mask, memory_pos, lambda logits, ban, logp: logp.argmax(dim=-1),
                       max_length, min_length, no_repeat_ngram_size)


@torch.no_grad()
def sample_decode(model: Stepper, memory: Tensor, memory_mask: Tensor | None = None,
                  memory_pos: Tensor | None = None, *, max_length: int, min_length: int = 0,
                  no_repeat_ngram_size: int = 0, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Ancestral sampling with temperature, top-k and nucleus (top-p) filtering.

    Args:
        temperature: logits are divided by it (> 0).
        top_k: sample among the k most likely tokens (0 = all).
        top_p: sample among the smallest set of tokens whose probability reaches top_p (1 = all).
        generator: a ``torch.Generator`` on memory's device.

    Returns:
        ids (B, T), scores (B,) as :func:`greedy_decode` (log-probabilities at temperature 1, unfiltered).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (use greedy decoding for 0), got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")

    def choose(logits: Tensor, ban: Tensor, logp: Tensor) -> Tensor:
        x = filter_logits((logits / temperature).masked_fill(ban, float("-inf")), top_k, top_p)
        x = x.masked_fill(ban.all(dim=-1, keepdim=True), 0.0)  # rows with nothing allowed (ended by the caller)
        return torch.multinomial(x.softmax(dim=-1), 1, generator=generator).squeeze(1)  # (B,)

    return _sequential(model, memory, memory_mask, memory_pos, choose, max_length, min_length,
                       no_repeat_ngram_size)


# ----------------------------------------------------------------------------------------------- beam search
class _FinishedPool:
    """The best ``num_beams`` finished hypotheses of each image, sorted by normalised score."""
    def __init__(self, B: int, K: int, max_length: int, pad_id: int, device: torch.device) -> None:
        self.seqs = torch.full((B, K, max_length), pad_id, dtype=torch.long, device=device)  # (B, K, Lmax)
        self.scores = torch.full((B, K), float("-inf"), device=device)  # (B, K)
        self.K, self.max_length, self.pad_id = K, max_length, pad_id

    def add(self, images: Tensor, seqs: Tensor, scores: Tensor) -> None:
        """Offer hypotheses seqs (A, K, L) with scores (A, K) to the pools of ``images`` (A,)."""
        seqs = F.pad(seqs, (0, self.max_length - seqs.shape[-1]), value=self.pad_id)  # (A, K, Lmax)
        all_scores = torch.cat((self.scores[images], scores), dim=1)  # (A, 2K)
        all_seqs = torch.cat((self.seqs[images], seqs), dim=1)  # (A, 2K, Lmax)
        top, idx = all_scores.topk(self.K, dim=1)  # (A, K), sorted
        self.scores[images] = top
        self.seqs[images] = all_seqs.gather(1, idx[..., None].expand(-1, -1, self.max_length))

    def worst(self, images: Tensor) -> Tensor:
        """(A,) lowest kept score (-inf while a pool is not full)."""
        return self.scores[images, -1]


@torch.no_grad()
def beam_search(model: Stepper, memory: Tensor, memory_mask: Tensor | None = None,
                memory_pos: Tensor | None = None, *, num_beams: int = 3, max_length: int, min_length: int = 0,
                length_penalty: float = 1.0, no_repeat_ngram_size: int = 0) -> tuple[Tensor, Tensor]:
    """Batched beam search with a finished-hypothesis pool per image.

    Args:
        num_beams: live hypotheses per image (K).
        length_penalty: exponent of the length normalisation (0: raw sums; > 0 favours longer captions).

    Returns:
        ids (B, T) of each image's best hypothesis, right-padded with PAD; scores (B,) its normalised score.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (BOS and one token), got {max_length}")
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    B, K, dev = memory.shape[0], num_beams, memory.device
    max_new = max_length - 1
    state = model.init_state(memory, memory_mask, memory_pos)
    bos = torch.full((B,), model.bos_id, dtype=torch.long, device=dev)
    logits = model.step(bos, state).float()  # (B, V): cross K/V computed once per image
    V = logits.shape[-1]
    rows = torch.arange(B, device=dev).repeat_interleave(K)  # (B*K,) image of each beam row
    state.reorder(rows)  # every cache, cross included, repeated to the beams
    logits = logits.index_select(0, rows)  # (B*K, V)
    seqs = bos.index_select(0, rows)[:, None]  # (B*K, 1)
    beam_scores = torch.full((B, K), float("-inf"), device=dev)  # (A, K) sum log-prob of each live beam
    beam_scores[:, 0] = 0.0  # the K beams start identical: extend only the first
    pool = _FinishedPool(B, K, max_length, model.pad_id, dev)
    active = torch.arange(B, device=dev)  # images still searching; live rows are grouped by them
    beam_offsets = torch.arange(K, device=dev)
    for t in range(1, max_new + 1):  # t = generated tokens after this step
        A = active.numel()
        ban = token_bans(model, seqs, V, min_length, no_repeat_ngram_size)
        cand = beam_scores[:, :, None] + masked_log_softmax(logits, ban).view(A, K, V)  # (A, K, V)
        eos_seqs = torch.cat((seqs, seqs.new_full((A * K, 1), model.eos_id)), dim=1)  # (A*K, t+1)
        eos_seqs = eos_seqs.view(A, K, t + 1)  # (A, K, t+1)
        pool.add(active, eos_seqs, cand[:, :, model.eos_id] / t**length_penalty)
        cand[:, :, model.eos_id] = float("-inf")
        beam_scores, flat = cand.view(A, K * V).topk(K, dim=1)  # (A, K*V) -> (A, K), best first
        src = (torch.arange(A, device=dev)[:, None] * K + flat // V).view(-1)  # (A*K,) row each beam extends
        seqs = torch.cat((seqs.index_select(0, src), (flat % V).view(-1, 1)), dim=1)  # (A*K, t+1)
        if t == max_new:  # length limit: live beams end here without EOS
            pool.add(active, seqs.view(A, K, t + 1), beam_scores / t**length_penalty)  # seqs as (A, K, t+1)
            break
        bound_len = max_new if length_penalty > 0 else t + 1  # where the best live beam could score highest
        done = pool.worst(active) >= beam_scores[:, 0] / bound_len**length_penalty  # (A,)
        if done.all():
            break
        if done.any():  # drop finished images' rows, together with the beam re-ranking
            keep = (~done).nonzero().squeeze(1)  # (A',)
            keep_rows = (keep[:, None] * K + beam_offsets).view(-1)  # (A'*K,)
            active, beam_scores, seqs = active[keep], beam_scores[keep], seqs[keep_rows]
            state.reorder(src[keep_rows], cross=True)
        else:
            state.reorder(src, cross=False)  # beams stay within their image: cross caches are unchanged
        logits = model.step(seqs[:, -1], state).float()  # (A*K, V)
    ids = pool.seqs[:, 0]  # (B, Lmax)
    T = int((ids != model.pad_id).sum(dim=1).max())
    return ids[:, :T], pool.scores[:, 0]
