"""CaptionTokenizer: normalisation, round trips, special tokens, batching, serialisation."""

from __future__ import annotations

import json
import re

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from vitkit.captioning import CaptionTokenizer

CAPTIONS = [
    "A red square on a white background.",
    "Two blue circles, next to a green triangle!",
    "A man's dog is running -- on the beach.",
    "a small red circle and a large blue square",
    "Three green squares; one red triangle?",
]
MODELS = ["bpe", "wordpiece", "wordlevel"]


@pytest.fixture(scope="module", params=MODELS)
def tok(request) -> CaptionTokenizer:
    return CaptionTokenizer.train(CAPTIONS * 3, vocab_size=200, model=request.param)


def test_normalisation_like_coco_eval(tok):
    assert tok.normalize("  A Man's DOG, running -- on the Beach!! ") == "a mans dog running on the beach"
    assert tok.normalize("ＲＥＤ «square»") == "red square"  # NFKC folds full-width letters


@pytest.mark.parametrize("text,expected", [
    ("a red square", "a red square"),
    ("A RED square.", "a red square"),
    ("Two blue circles, next to a green triangle!", "two blue circles next to a green triangle"),
    ("a man's dog", "a mans dog"),
])
def test_round_trip_after_normalisation(tok, text, expected):
    ids = tok.encode(text)
    assert all(i not in (tok.pad_id, tok.bos_id, tok.eos_id) for i in ids)
    assert tok.decode(ids) == expected
    assert tok.decode(tok.encode_batch([text])[0]) == expected


def test_subword_models_split_words_and_still_round_trip():
    for model in ("bpe", "wordpiece"):
        tok = CaptionTokenizer.train(CAPTIONS, vocab_size=40, model=model)  # too small for whole words
        text = "two blue circles next to a green triangle"
        ids = tok.encode(text)
        assert len(ids) > len(text.split()), model
        assert tok.decode(ids) == text, model


def test_special_tokens(tok):
    ids = [tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id]
    assert ids == [0, 1, 2, 3]  # the Captioner defaults
    assert tok.vocab_size == len(tok) > 4
    unk = tok.encode("zebra")
    assert tok.unk_id in unk and "zebra" not in tok.decode(unk)  # bpe keeps the known letters: "ebra"


def test_encode_batch_pads_and_truncates_keeping_eos(tok):
    texts = ["a red square", "two blue circles next to a green triangle", ""]
    n = [len(tok.encode(t)) for t in texts]
    ids = tok.encode_batch(texts)
    assert ids.dtype == torch.long and ids.shape == (3, max(n) + 2)
    for row, text, k in zip(ids.tolist(), texts, n, strict=True):
        assert row[0] == tok.bos_id and row[1: k + 1] == tok.encode(text) and row[k + 1] == tok.eos_id
        assert row[k + 2:] == [tok.pad_id] * (max(n) - k)
    short = tok.encode_batch(texts, max_length=5)
    assert short.shape == (3, 5)
    assert short[:, -1].tolist()[:2] == [tok.eos_id, tok.eos_id]  # cut captions keep their EOS
    assert short[1, 1:4].tolist() == tok.encode(texts[1])[:3]
    assert short[2].tolist() == [tok.bos_id, tok.eos_id] + [tok.pad_id] * 3
    with pytest.raises(ValueError, match="max_length"):
        tok.encode_batch(texts, max_length=1)


def test_decode_stops_at_eos_and_drops_specials(tok):
    red, square = tok.encode("red"), tok.encode("square")
    ids = [tok.bos_id, *red, tok.pad_id, *square, tok.eos_id, *red, tok.pad_id]
    assert tok.decode(ids) == "red square"
    assert tok.decode(torch.tensor(ids)) == "red square"
    batch = tok.encode_batch(["a red square", "two blue circles"])
    assert tok.decode_batch(batch) == ["a red square", "two blue circles"]


def test_serialisation_round_trips(tok, tmp_path):
    text = "a small red circle and a large blue square"
    copy = CaptionTokenizer.from_str(tok.to_str())
    assert copy.encode(text) == tok.encode(text) and copy.decode(copy.encode(text)) == text
    tok.save(tmp_path / "tokenizer.json")
    loaded = CaptionTokenizer.from_file(tmp_path / "tokenizer.json")
    assert loaded.encode(text) == tok.encode(text) and loaded.vocab_size == tok.vocab_size
    assert (loaded.pad_id, loaded.bos_id, loaded.eos_id) == (tok.pad_id, tok.bos_id, tok.eos_id)
    assert json.loads(loaded.to_str())["normalizer"] is not None


def test_missing_special_token_is_a_clear_error(tmp_path):
    raw = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    raw.train_from_iterator(CAPTIONS, trainer=trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[EOS]"]))
    raw.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match=r"no '\[BOS\]' token.*add_special_tokens\(\['\[BOS\]'\]\)"):
        CaptionTokenizer.from_file(tmp_path / "tokenizer.json")
    raw.add_special_tokens(["[BOS]"])  # the fix the message suggests
    fixed = CaptionTokenizer.from_str(raw.to_str())
    assert fixed.bos_id == raw.get_vocab_size() - 1 and fixed.decode(fixed.encode("a red square")) == "a red square"


def test_unknown_model_kind():
    with pytest.raises(ValueError, match=re.escape("bpe|wordpiece|wordlevel")):
        CaptionTokenizer.train(CAPTIONS, model="unigram")
