"""CIDEr-D against a fixed reference corpus (document frequencies built once): the reward of SCST.

Captions are compared as given, split on whitespace; tokenise references and candidates alike.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

Ngram = tuple[str, ...]


def ngram_counts(caption: str, n: int = 4) -> Counter[Ngram]:
    """Counts of every 1..n-gram of the whitespace-split caption."""
    words = caption.split()
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


class _Vector:
    """tf-idf weights per n-gram order, their norms, and the caption's length in words."""
    __slots__ = ("length", "norms", "weights")

    def __init__(self, weights: list[dict[Ngram, float]], norms: list[float], length: int) -> None:
        self.weights, self.norms, self.length = weights, norms, length


class CiderD:
    """CIDEr-D with document frequencies from a fixed reference corpus.

    Args:
        references: image key -> its tokenised reference captions; every key is one IDF document.
        n: longest n-gram.
        sigma: width of the Gaussian length penalty.

    Raises:
        ValueError: no images, or an image without references.
    """
    def __init__(self, references: Mapping[Hashable, Sequence[str]], n: int = 4, sigma: float = 6.0) -> None:
        if not references:
            raise ValueError("CiderD needs at least one image's references")
        empty = [k for k, refs in references.items() if not refs]
        if empty:
            raise ValueError(f"CiderD: images without references: {empty[:5]}")
        self.n, self.sigma = n, sigma
        counts = {key: [ngram_counts(r, n) for r in refs] for key, refs in references.items()}
        self.document_frequency: Counter[Ngram] = Counter()
        for refs in counts.values():
            self.document_frequency.update({g for c in refs for g in c})
        self.log_documents = math.log(float(len(counts)))
        self._refs = {key: [self._vector(c) for c in refs] for key, refs in counts.items()}

    def __contains__(self, key: Hashable) -> bool:
        return key in self._refs

    def digest(self) -> str:
        """SHA-256 of the document frequencies and corpus size (equal statistics <=> equal digests)."""
        h = hashlib.sha256(repr(len(self._refs)).encode())
        for gram, df in sorted(self.document_frequency.items()):
            h.update(f"{' '.join(gram)}\t{len(gram)}\t{df}\n".encode())
        return h.hexdigest()

    def _vector(self, counts: Counter[Ngram]) -> _Vector:
        weights: list[dict[Ngram, float]] = [{} for _ in range(self.n)]
        for gram, tf in counts.items():
            idf = self.log_documents - math.log(max(1.0, self.document_frequency.get(gram, 0.0)))
            weights[len(gram) - 1][gram] = tf * idf
        norms = [math.sqrt(sum(w * w for w in order.values())) for order in weights]
        length = sum(tf for gram, tf in counts.items() if len(gram) == 2)  # as pycocoevalcap: the bigram count
        return _Vector(weights, norms, length)

    def _similarity(self, hyp: _Vector, ref: _Vector) -> float:
        """Mean over n of the clipped cosine, times the length penalty."""
        penalty = math.exp(-float(hyp.length - ref.length) ** 2 / (2 * self.sigma**2))
        total = 0.0
        for k in range(self.n):
            rw = ref.weights[k]
            val = sum(min(w, rw.get(g, 0.0)) * rw.get(g, 0.0) for g, w in hyp.weights[k].items())
            if hyp.norms[k] != 0 and ref.norms[k] != 0:
                val /= hyp.norms[k] * ref.norms[k]
            total += val * penalty
        return total / self.n

    def score(self, captions: Sequence[str], keys: Sequence[Hashable]) -> np.ndarray:
        """CIDEr-D of C tokenised captions against their image keys' references.

        Returns:
            (C,) float64 scores (10 x the mean cosine).

        Raises:
            KeyError: a key that is not in the corpus.
        """
        if len(captions) != len(keys):
            raise ValueError(f"{len(captions)} captions but {len(keys)} image keys")
        out = np.zeros(len(captions))
        for i, (caption, key) in enumerate(zip(captions, keys, strict=True)):
            if key not in self._refs:
                raise KeyError(f"image {key!r} is not in the CIDEr-D reference corpus")
            refs = self._refs[key]
            hyp = self._vector(ngram_counts(caption, self.n))
            out[i] = 10.0 * sum(self._similarity(hyp, r) for r in refs) / len(refs)
        return out
