"""Captioning, all in one place: the captioner model, tokenizer, decoding strategies, the predictor, the Lightning
module and datamodule, export and pictures."""

from vitkit.captioning.decoding import beam_search, greedy_decode, sample_decode
from vitkit.captioning.model import Captioner, DecodeState
from vitkit.captioning.tokenizer import CaptionTokenizer

__all__ = ["CaptionTokenizer", "Captioner", "DecodeState", "beam_search", "greedy_decode", "sample_decode"]
