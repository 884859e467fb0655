"""CiderD (the SCST reward) against pycocoevalcap's CIDEr-D on hand-made cases, and its fixed corpus statistics."""

from __future__ import annotations

import random

import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider

from vitkit.eval.cider import CiderD

HAND = {
    1: ["a red square on the left", "one red square", "a small red square at the top left"],
    2: ["two blue circles", "a blue circle and a blue circle", "two circles that are blue"],
    3: ["an empty gray background"],
    4: ["a green triangle and a red star", "a red star beside a green triangle"],
}


def _pycocoevalcap(gts: dict, res: dict) -> np.ndarray:
    return np.asarray(Cider().compute_score(gts, {k: [v] for k, v in res.items()})[1])


@pytest.mark.parametrize("res", [
    {1: "a red square on the left", 2: "two blue circles", 3: "an empty gray background", 4: "a red star"},
    {1: "a blue circle", 2: "a red square", 3: "two blue circles", 4: "a green triangle and a red star"},
    {1: "red red red red", 2: "two", 3: "nothing here at all", 4: "a red star beside a green triangle and more"},
])
def test_equals_pycocoevalcap_on_hand_made_cases(res):
    ours = CiderD(HAND).score([res[k] for k in HAND], list(HAND))
    np.testing.assert_allclose(ours, _pycocoevalcap(HAND, res), rtol=1e-12, atol=1e-12)


def test_exact_reference_scores_high_and_unrelated_scores_zero():
    scores = CiderD(HAND).score(["a red square on the left", "purple hexagons everywhere"], [1, 1])
    assert scores[0] > 1.0 and scores[1] == 0.0


def test_equals_pycocoevalcap_on_random_corpora():
    rng = random.Random(0)
    words = ["a", "an", "the", "red", "blue", "green", "small", "large", "square", "circle", "star", "on", "left",
             "right", "top", "and", "two", "three", "of"]
    for _ in range(5):
        gts = {i: [" ".join(rng.choices(words, k=rng.randint(2, 10))) for _ in range(rng.randint(1, 5))]
               for i in range(rng.randint(2, 25))}
        res = {i: " ".join(rng.choices(words, k=rng.randint(1, 12))) for i in gts}
        ours = CiderD(gts).score([res[i] for i in gts], list(gts))
        np.testing.assert_allclose(ours, _pycocoevalcap(gts, res), rtol=1e-12, atol=1e-12)


def test_statistics_are_fixed_by_the_corpus_not_by_the_batch():
    """A batch of two images scores as it does within the whole corpus (pycocoevalcap's IDF would change)."""
    cider = CiderD(HAND)
    res = {1: "a red square", 2: "two blue circles", 3: "an empty gray background", 4: "a red star"}
    whole = cider.score([res[k] for k in HAND], list(HAND))
    batch = cider.score([res[2], res[1], res[2]], [2, 1, 2])  # repeated keys: several samples of one image
    np.testing.assert_array_equal(batch, whole[[1, 0, 1]])
    assert not np.allclose(_pycocoevalcap({k: HAND[k] for k in (1, 2)}, {k: res[k] for k in (1, 2)}), whole[:2])


def test_digest_depends_on_the_statistics_only():
    shuffled = dict(reversed(list(HAND.items())))
    assert CiderD(shuffled).digest() == CiderD(HAND).digest()
    changed = {**HAND, 3: ["an empty grey background"]}
    assert CiderD(changed).digest() != CiderD(HAND).digest()


def test_bad_input_is_named():
    with pytest.raises(KeyError, match="99"):
        CiderD(HAND).score(["a red square"], [99])
    with pytest.raises(ValueError, match="without references"):
        CiderD({1: ["x"], 2: []})
    with pytest.raises(ValueError, match="2 captions but 1"):
        CiderD(HAND).score(["a", "b"], [1])
