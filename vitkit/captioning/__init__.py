"""Captioning pieces without model weights: the caption tokenizer and the decoding strategies."""

from vitkit.captioning.decoding import beam_search, greedy_decode, sample_decode
from vitkit.captioning.tokenizer import CaptionTokenizer

__all__ = ["CaptionTokenizer", "beam_search", "greedy_decode", "sample_decode"]
