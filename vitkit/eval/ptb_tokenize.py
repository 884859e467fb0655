"""Caption tokenisation for the metrics: pycocoevalcap's PTBTokenizer (Java) where Java runs, else
:func:`python_ptb_tokenize`, a Python approximation of it (tests/eval/test_caption_metrics.py compares the two)."""

from __future__ import annotations

import re
import shutil
import warnings
from collections.abc import Sequence

from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS, PTBTokenizer


def java_available() -> bool:
    """Whether a ``java`` executable is on PATH (needed by METEOR and the PTB tokenizer)."""
    return shutil.which("java") is not None


_DROPPED = frozenset(PUNCTUATIONS)  # the tokens PTBTokenizer's output loses, as pycocoevalcap lists them
_UNICODE = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": " -- ",
                          "\u2014": " -- ", "\u2026": " ... ", "\u00a0": " "})
# PTB writes brackets as -LRB- etc.; lower-cased they no longer match pycocoevalcap's list, so they stay.
_BRACKETS = {"(": " -lrb- ", ")": " -rrb- ", "[": " -lsb- ", "]": " -rsb- ", "{": " -lcb- ", "}": " -rcb- "}
_WHOLE = frozenset({*(b.strip() for b in _BRACKETS.values()), "'s", "'m", "'d", "'re", "'ve", "'ll", "n't", "'n'"})
_FUSED = {"cannot": ["can", "not"], "gonna": ["gon", "na"], "gotta": ["got", "ta"], "wanna": ["wan", "na"],
          "lemme": ["lem", "me"], "gimme": ["gim", "me"]}
_CLITIC = re.compile(r"^(.+?)(n't|'s|'m|'d|'re|'ve|'ll)$")
_ACRONYM = re.compile(r"^(?:[a-z]\.)*[a-z]$")  # "u.s", "a.m", "b": the final period stays attached
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "gen", "sgt", "rev", "etc", "vs", "inc",
                            "ltd", "co", "corp", "ave", "mt", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep",
                            "sept", "oct", "nov", "dec"})
_SEPARATOR = re.compile(r"(?<!\d)[,;:]|[,;:](?!\d)")  # , ; : split words, except inside numbers (1,000 3:30)
_END_RUN = re.compile(r"[.?!]+$")


def _split_word(word: str) -> list[str]:
    """PTB tokens of one lower-cased, whitespace-free chunk (dropped punctuation may still be among them)."""
    if word in _WHOLE:
        return [word]
    tail: list[str] = []
    while word and word not in _WHOLE:
        end = _END_RUN.search(word)
        if word[-1] == "'":  # closing quote or plural possessive: PTB's ' token, dropped
            word = word[:-1]
        elif word[-1] == "-":  # trailing - or --: dropped
            word = word.rstrip("-")
        elif word[-1] in "%/" and len(word) > 1:
            tail.insert(0, word[-1])
            word = word[:-1]
        elif end is not None:
            core = word[: end.start()]
            if end.group() == "." and (_ACRONYM.match(core) or core in _ABBREVIATIONS):
                break  # "u.s.", "a.m.", "mr.", "etc." keep their period
            tail.insert(0, end.group())  # "." "?" "!" "..." are dropped later; runs like "!!!" or "?!" stay
            word = core
        else:
            break
    head: list[str] = []
    while word and word not in _WHOLE and word[0] in "$#'":
        if word[0] != "'":
            head.append(word[0])
            word = word[1:]
        elif word[1:] in ("tis", "twas"):
            head.append("'t")
            word = word[2:]
        else:  # an opening quote: PTB's ` token, dropped
            word = word[1:]
    if word in _FUSED:
        middle = _FUSED[word]
    elif word not in _WHOLE and (clitic := _CLITIC.match(word)) is not None:
        middle = [clitic.group(1), clitic.group(2)]  # "dog's" -> dog 's, "can't" -> ca n't
    else:
        middle = [word] if word else []
    return head + middle + tail


def python_ptb_tokenize(caption: str) -> str:
    """Tokenise one caption the way pycocoevalcap's ``PTBTokenizer`` does, without Java (an approximation).

    Lower-cases; splits off punctuation, clitics, currency and percent signs; writes brackets as ``-lrb-`` etc.;
    drops the tokens pycocoevalcap drops (``PUNCTUATIONS``).

    Returns:
        The tokens joined by single spaces ("" when nothing is left).
    """
    text = caption.translate(_UNICODE).replace('"', " ").replace("`", " ")
    for bracket, name in _BRACKETS.items():
        text = text.replace(bracket, name)
    text = _SEPARATOR.sub(" ", text).lower()
    tokens = [token for word in text.split() for token in _split_word(word)]
    return " ".join(token for token in tokens if token not in _DROPPED)


def _java_ptb_tokenize(captions: list[str]) -> list[str]:
    """pycocoevalcap's PTBTokenizer over ``captions`` (non-empty, one line each), checking the output lines up."""
    out = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(captions)})
    if sorted(out) != list(range(len(captions))) or any(len(v) != 1 for v in out.values()):
        raise RuntimeError(f"the PTB tokenizer returned {len(out)} lines for {len(captions)} captions")
    return [out[i][0] for i in range(len(captions))]


def tokenize_captions(captions: Sequence[str], java: bool | None = None) -> list[str]:
    """Tokenise captions (raw strings, empty allowed) for the metrics: PTBTokenizer with Java, else Python.

    Args:
        java: use Java; None = whether ``java`` is on PATH. A failing Java tokenizer warns and falls back.

    Returns:
        One space-joined token string per caption, in order.
    """
    use_java = java_available() if java is None else java
    # every whitespace run (newlines included) becomes one space, so one caption stays one line for Java
    cleaned = [" ".join(c.split()) for c in captions]
    todo = [i for i, c in enumerate(cleaned) if c]
    if use_java and todo:
        try:
            done = _java_ptb_tokenize([cleaned[i] for i in todo])
        except (OSError, RuntimeError, ValueError) as exc:
            warnings.warn(f"pycocoevalcap's PTB tokenizer failed ({type(exc).__name__}: {exc}); "
                          "captions were tokenised with vitkit's Python approximation instead", stacklevel=2)
        else:
            result = [""] * len(cleaned)
            for i, tokens in zip(todo, done, strict=True):
                result[i] = tokens
            return result
    return [python_ptb_tokenize(c) for c in cleaned]
