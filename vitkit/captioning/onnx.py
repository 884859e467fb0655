"""Captioning's ONNX graph, the caption encoder, and decoding from its outputs in PyTorch.

Graph: ``images``, ``mask`` -> ``memory`` (B, N, D), ``memory_mask`` (B, N) bool True = padding, ``memory_pos``
(B, N, D); :func:`decode_memory` decodes them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from vitkit.captioning.decoding import beam_search, greedy_decode, sample_decode
from vitkit.core.trace import check_traceable, dummy_inputs, pad_to_multiple, trace_multiple
from vitkit.kernels.precision import model_dtype

INPUTS, OUTPUTS = ["images", "mask"], ["memory", "memory_mask", "memory_pos"]
DYNAMIC_AXES = {"images": {0: "batch", 2: "height", 3: "width"}, "mask": {0: "batch", 1: "height", 2: "width"},
                **{name: {0: "batch", 1: "tokens"} for name in OUTPUTS}}


# ------------------------------------------------------------------------------------------------ the graph
class CaptionEncoderExport(nn.Module):
    """The image side of a :class:`~vitkit.captioning.Captioner` (eval mode) with tensor outputs."""
    def __init__(self, captioner: nn.Module) -> None:
        super().__init__()
        check_traceable(captioner.encoder)
        self.captioner = captioner
        self.multiple = trace_multiple(captioner.encoder)

    def forward(self, images: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, 3, H, W) images, (B, H, W) mask -> memory (B, N, D), memory_mask (B, N) bool, memory_pos (B, N, D)."""
        images, mask = pad_to_multiple(images, mask, self.multiple)
        memory, memory_mask, memory_pos = self.captioner.encode(images, mask)
        if memory_mask is None:  # nothing padded: only reachable in eager runs, the trace always has padding
            memory_mask = torch.zeros(memory.shape[:2], dtype=torch.bool, device=memory.device)
        return memory, memory_mask, memory_pos


def graph(pipe: nn.Module) -> CaptionEncoderExport:
    """The traceable caption encoder of a :class:`~vitkit.captioning.predictor.CaptionPipeline`, in eval mode."""
    return CaptionEncoderExport(pipe.captioner).eval()


def trace_inputs(batch: int, height: int, width: int, stride: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """The graph's dummy inputs (:func:`~vitkit.core.trace.dummy_inputs`)."""
    return dummy_inputs(batch, height, width, stride, seed)


def onnx_metadata(pipe: nn.Module) -> dict[str, str]:
    """The captioning entries of the graph's metadata: the tokenizer and what the outputs are."""
    return {"tokenizer": pipe.tokenizer.to_str(),
            "outputs": "memory (B, N, D), memory_mask (B, N) True = padding, memory_pos (B, N, D); decode them "
                       "with vitkit.captioning.onnx.decode_memory (PyTorch)"}


def compare_encoder(ref: tuple, got: tuple) -> dict[str, float]:
    """Largest abs differences of (memory, memory_mask, memory_pos); ``memory_mask`` counts differing entries."""
    r = [torch.as_tensor(t) for t in ref]
    g = [torch.as_tensor(t) for t in got]
    return {"memory": float((r[0].double() - g[0].double()).abs().max()),
            "memory_mask": float((r[1] != g[1]).sum()),
            "memory_pos": float((r[2].double() - g[2].double()).abs().max())}


def compare(reference: tuple, got: tuple, inputs: tuple[Tensor, ...]) -> dict[str, float]:
    """:func:`compare_encoder` (the same signature as detection's ``compare``)."""
    return compare_encoder(reference, got)


# ------------------------------------------------------------------------------------------------ decoding
_DECODERS = {"greedy": (greedy_decode, ("max_length", "min_length", "no_repeat_ngram_size")),
             "beam": (beam_search, ("max_length", "min_length", "no_repeat_ngram_size", "num_beams",
                                    "length_penalty")),
             "sample": (sample_decode, ("max_length", "min_length", "no_repeat_ngram_size", "temperature", "top_k",
                                        "top_p", "generator"))}


def decode_memory(pipe: nn.Module, memory: Any, memory_mask: Any, memory_pos: Any, **options: Any) -> list[dict]:
    """Caption from an exported encoder's outputs, decoding in PyTorch with the pipeline's captioner.

    Args:
        pipe: the :class:`~vitkit.captioning.predictor.CaptionPipeline`.
        memory, memory_mask, memory_pos: the graph's outputs (numpy arrays or tensors), (B, N, D), (B, N), (B, N, D).
        **options: generation options over the pipeline's defaults.

    Returns:
        B dicts ``{"caption": str, "score": float}``.
    """
    opts = pipe.generation_options(**options)
    cap = pipe.captioner.eval()
    device = pipe.device
    memory, memory_mask, memory_pos = (torch.as_tensor(t).to(device) for t in (memory, memory_mask, memory_pos))
    fn, keep = _DECODERS[opts.pop("method")]
    opts["max_length"] = opts["max_length"] or cap.max_length
    with torch.no_grad():
        ids, scores = fn(cap, memory.to(model_dtype(cap)), memory_mask.bool(), memory_pos,
                         **{k: v for k, v in opts.items() if k in keep})
    captions = pipe.tokenizer.decode_batch(ids.cpu())
    return [{"caption": c, "score": float(s)} for c, s in zip(captions, scores.float().cpu().tolist(), strict=True)]
