"""Self-critical sequence training (SCST): fine-tune a captioner on its own samples with a CIDEr-D reward.

Loss: ``-mean over generated tokens of (reward - baseline) * log p(token)``, the baseline being the mean reward of
the image's other samples. Captions that emitted EOS are scored with an end word.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from vitkit.captioning.decoding import sample_decode
from vitkit.captioning.model import Captioner, memory_rows, per_caption_rows
from vitkit.captioning.tokenizer import CaptionTokenizer
from vitkit.eval.cider import CiderD
from vitkit.eval.ptb_tokenize import python_ptb_tokenize

# (token ids (R, T) of R captions, the image key of each) -> (R,) rewards
RewardFn = Callable[[Tensor, Sequence[Hashable]], np.ndarray]


END_WORD = "<eos>"  # PTB tokenisation never yields it (it drops "<" and ">")


def reward_corpus(references: Mapping[Hashable, Sequence[str]]) -> CiderD:
    """The reward's CIDEr-D statistics: every reference PTB-tokenised, with the end word appended."""
    return CiderD({key: [f"{python_ptb_tokenize(c)} {END_WORD}" for c in refs] for key, refs in references.items()})


def caption_rewards(cider: CiderD, tokenizer: CaptionTokenizer, ids: Tensor, keys: Sequence[Hashable]) -> np.ndarray:
    """CIDEr-D of (R, T) caption token ids against their keys' references in ``cider`` (:func:`reward_corpus`);
    a caption that emitted EOS ends with the end word. Returns (R,) float64."""
    ended = (ids == tokenizer.eos_id).any(dim=1).tolist()
    texts = [python_ptb_tokenize(c) + (f" {END_WORD}" if end else "")
             for c, end in zip(tokenizer.decode_batch(ids.cpu()), ended, strict=True)]
    return cider.score(texts, keys)


@dataclass
class SCSTOutput:
    """One SCST step: the loss to minimise and what to log."""
    loss: Tensor  # () fp32
    reward: float  # mean reward of the samples
    baseline: float  # mean baseline


def sequence_log_probs(logits: Tensor, seqs: Tensor, banned: Sequence[int]) -> Tensor:
    """Log-probability of each generated token under the sampling policy (``banned`` ids renormalised away).

    Args:
        logits: (R, T, V) teacher-forced logits of ``seqs``.
        seqs: (R, T) ``[BOS] tokens [EOS] [PAD]...``.

    Returns:
        (R, T-1) fp32 log p(seqs[:, t+1] | seqs[:, :t+1]).
    """
    x = logits[:, :-1].float()  # (R, T-1, V)
    x = x.index_fill(-1, torch.tensor(list(banned), device=x.device), float("-inf"))
    logp = x.log_softmax(dim=-1)
    return logp.gather(-1, seqs[:, 1:, None]).squeeze(-1)  # (R, T-1)


def policy_gradient_loss(token_logp: Tensor, target_mask: Tensor, advantage: Tensor) -> Tensor:
    """``-sum(advantage * log p * mask) / sum(mask)``: (R, T-1) log-probs and bool mask, (R,) advantages -> ()."""
    logp = token_logp.masked_fill(~target_mask, 0.0)
    weighted = advantage[:, None].to(logp.dtype) * logp
    return -weighted.sum() / target_mask.sum().clamp(min=1)


def baseline_rewards(rewards: Tensor) -> Tensor:
    """(B, k) baselines of (B, k) rewards: the mean reward of the image's other samples.

    Raises:
        ValueError: k < 2.
    """
    k = rewards.shape[1]
    if k < 2:
        raise ValueError("the mean-of-samples baseline needs at least 2 samples per image")
    return (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)


def scst_step(captioner: Captioner, images: Tensor, mask: Tensor | None, keys: Sequence[Hashable],
              reward: RewardFn, samples: int = 5) -> SCSTOutput:
    """The SCST loss of one batch of images.

    Args:
        images: (B, 3, H, W) normalised, zero-padded; mask: (B, H, W) True = padding, or None.
        keys: B image keys for the reward's references.
        reward: scores token ids against an image key's references.
        samples: k >= 2 sampled captions per image.

    Returns:
        The loss and the mean reward and baseline.
    """
    memory, memory_mask, memory_pos = captioner.encode(images, mask)  # (B, N, D), (B, N) | None, (B, N, D)
    B, k = memory.shape[0], samples
    device = memory.device
    rows = per_caption_rows(B, B * k, device)  # (B*k,) image of each sample; None with one sample
    mem_k, mask_k, pos_k = memory_rows(memory, memory_mask, memory_pos, rows)  # (B*k, N, D), (B*k, N), (B*k, N, D)
    with torch.no_grad():
        seqs, _ = sample_decode(captioner, mem_k.detach(), mask_k, pos_k.detach(), max_length=captioner.max_length)
    sample_keys = [key for key in keys for _ in range(k)]
    r = torch.as_tensor(reward(seqs, sample_keys), dtype=torch.float32, device=device).view(B, k)
    b = baseline_rewards(r)  # (B, k)
    logits = captioner.decode_tokens(seqs, memory, memory_mask, memory_pos)  # (B*k, T, V): k rows per memory row
    token_logp = sequence_log_probs(logits, seqs, (captioner.pad_id, captioner.bos_id))  # (B*k, T-1)
    target_mask = seqs[:, 1:] != captioner.pad_id  # (B*k, T-1)
    loss = policy_gradient_loss(token_logp, target_mask, (r - b).view(-1))
    return SCSTOutput(loss, float(r.mean()), float(b.mean()))
