"""CaptionTokenizer: a thin wrapper over a Hugging Face ``tokenizers.Tokenizer`` for captions.

Trained tokenizers normalise with NFKC, lowercase and removal of Unicode punctuation, then split on whitespace.
Loaded tokenizer.json files keep their own normaliser. Special tokens: ``[PAD]``, ``[BOS]``, ``[EOS]``
(required), ``[UNK]`` (optional for loaded files); trained ones get ids 0..3.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from torch import Tensor

PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
_BPE_SUFFIX = "</w>"
_WORDPIECE_PREFIX = "##"


def caption_normalizer() -> normalizers.Normalizer:
    """NFKC + lowercase + punctuation removal (Unicode category P)."""
    return normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase(),
                                 normalizers.Replace(Regex(r"\p{P}"), "")])


def _build(model: str) -> tuple[Tokenizer, type]:
    """An untrained tokenizer of the given kind, and its trainer class."""
    if model == "bpe":
        tok = Tokenizer(models.BPE(unk_token=UNK, end_of_word_suffix=_BPE_SUFFIX))
        tok.decoder = decoders.BPEDecoder(suffix=_BPE_SUFFIX)
        return tok, trainers.BpeTrainer
    if model == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=UNK, continuing_subword_prefix=_WORDPIECE_PREFIX))
        tok.decoder = decoders.WordPiece(prefix=_WORDPIECE_PREFIX, cleanup=False)
        return tok, trainers.WordPieceTrainer
    if model == "wordlevel":
        return Tokenizer(models.WordLevel(unk_token=UNK)), trainers.WordLevelTrainer
    raise ValueError(f"model must be bpe|wordpiece|wordlevel, got {model!r}")


class CaptionTokenizer:
    """Caption text <-> token ids; build one with :meth:`train`, :meth:`from_file` or :meth:`from_str`.

    Raises:
        ValueError: a required special token (``[PAD]``, ``[BOS]``, ``[EOS]``) is missing.
    """
    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        ids = {}
        for name in (PAD, BOS, EOS):
            ids[name] = tokenizer.token_to_id(name)
            if ids[name] is None:
                raise ValueError(
                    f"tokenizer has no {name!r} token; add it before use, e.g. "
                    f"`tok = tokenizers.Tokenizer.from_file(path); tok.add_special_tokens([{name!r}]); "
                    f"tok.save(path)` (CaptionTokenizer.train adds {', '.join(SPECIAL_TOKENS)} itself)"
                )
        if len(set(ids.values())) != 3:
            raise ValueError(f"special tokens must have distinct ids, got {ids}")
        self._pad, self._bos, self._eos = ids[PAD], ids[BOS], ids[EOS]
        self._unk = tokenizer.token_to_id(UNK)
        self._special = {self._pad, self._bos, self._eos} | ({self._unk} if self._unk is not None else set())

    # ------------------------------------------------------------------------------------------- building
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 1000, model: str = "bpe") -> CaptionTokenizer:
        """Train a tokenizer on caption texts (iterable, read once).

        Args:
            vocab_size: upper bound on the vocabulary, special tokens included.
            model: "bpe", "wordpiece" or "wordlevel".

        Returns:
            A tokenizer with ``[PAD]``, ``[BOS]``, ``[EOS]``, ``[UNK]`` at ids 0..3.
        """
        tok, trainer_cls = _build(model)
        tok.normalizer = caption_normalizer()
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        kw = dict(vocab_size=vocab_size, min_frequency=1, special_tokens=list(SPECIAL_TOKENS))
        if model == "bpe":
            kw["end_of_word_suffix"] = _BPE_SUFFIX
        if model == "wordpiece":
            kw["continuing_subword_prefix"] = _WORDPIECE_PREFIX
        tok.train_from_iterator(texts, trainer=trainer_cls(**kw))
        return cls(tok)

    @classmethod
    def from_file(cls, path: str | Path) -> CaptionTokenizer:
        """Load a ``tokenizer.json`` (any Hugging Face tokenizers model); its normaliser is kept."""
        return cls(Tokenizer.from_file(str(path)))

    @classmethod
    def from_str(cls, json_str: str) -> CaptionTokenizer:
        """Inverse of :meth:`to_str`."""
        return cls(Tokenizer.from_str(json_str))

    def to_str(self) -> str:
        """The tokenizer.json content as a string (to store inside a checkpoint)."""
        return self.tokenizer.to_str()

    def save(self, path: str | Path) -> None:
        """Write tokenizer.json to ``path``."""
        self.tokenizer.save(str(path))

    # ------------------------------------------------------------------------------------------ properties
    @property
    def pad_id(self) -> int:
        return self._pad

    @property
    def bos_id(self) -> int:
        return self._bos

    @property
    def eos_id(self) -> int:
        return self._eos

    @property
    def unk_id(self) -> int | None:
        return self._unk

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (the size of the model's embedding table)."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    # -------------------------------------------------------------------------------------------- encoding
    def normalize(self, text: str) -> str:
        """The text as the tokenizer sees it: normalised, words joined by single spaces."""
        norm = self.tokenizer.normalizer
        return " ".join((norm.normalize_str(text) if norm is not None else text).split())

    def encode(self, text: str) -> list[int]:
        """Token ids of one caption, without special tokens."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], max_length: int | None = None) -> Tensor:
        """Model inputs for B captions.

        Args:
            max_length: longest sequence, BOS and EOS included (>= 2); longer captions lose their last
                tokens and keep the EOS. None: no truncation.

        Returns:
            (B, T) long ids ``[BOS] tokens [EOS] [PAD]...``, T = the longest sequence in the batch.
        """
        if max_length is not None and max_length < 2:
            raise ValueError(f"max_length must be >= 2 (room for BOS and EOS), got {max_length}")
        encs = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        keep = None if max_length is None else max_length - 2
        seqs = [[self._bos, *e.ids[:keep], self._eos] for e in encs]
        T = max((len(s) for s in seqs), default=2)
        out = torch.full((len(seqs), T), self._pad, dtype=torch.long)
        for i, s in enumerate(seqs):
            out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        return out

    # -------------------------------------------------------------------------------------------- decoding
    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """Caption text of one id sequence: a leading BOS is skipped, decoding stops at the first EOS,
        special tokens are dropped and words are joined by single spaces."""
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        if ids and ids[0] == self._bos:
            ids = ids[1:]
        if self._eos in ids:
            ids = ids[: ids.index(self._eos)]
        ids = [i for i in ids if i not in self._special]
        return " ".join(self.tokenizer.decode(ids, skip_special_tokens=True).split())

    def decode_batch(self, ids: Sequence[Sequence[int]] | Tensor) -> list[str]:
        """:meth:`decode` for each row of (B, T) ids."""
        return [self.decode(row) for row in ids]


def load_or_train_tokenizer(path: str | Path | None, texts: Callable[[], Iterable[str]], vocab_size: int,
                            model: str) -> CaptionTokenizer:
    """The tokenizer at ``path`` (a ``tokenizer.json``), or one trained on ``texts()`` when ``path`` is None;
    ValueError naming ``data.tokenizer`` and the file when the file cannot be used.
    """
    if path is None:
        return CaptionTokenizer.train(texts(), vocab_size=vocab_size, model=model)
    try:
        return CaptionTokenizer.from_file(path)
    except Exception as err:
        raise ValueError(f"data.tokenizer: cannot use {path} ({type(err).__name__}: {err})") from err


def tokenizer_mismatch(tok: CaptionTokenizer, model: Any, what: str, name: str, key: str) -> str | None:
    """The message when ``tok`` does not fit a text model's ``vocab_size`` and special ids (None when it does)."""
    theirs = (tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id)
    ours = (model.vocab_size, model.pad_id, model.bos_id, model.eos_id)
    if theirs == ours:
        return None
    return (f"{what} (vocab_size, pad, bos, eos ids) = {theirs} does not match the {name}'s {ours}; leave "
            f"{key}.init_args.vocab_size and the special ids out of the config (they are linked from data)")
