"""Detection's ONNX graph: the traceable module, dummy inputs, the trace check, metadata and comparison with eager.

Graph: ``images`` (B, 3, H, W) float32 normalised, zero-padded; ``mask`` (B, H, W) bool, True = padding;
``orig_sizes`` (B, 2) int64 [h, w] -> ``boxes`` (B, K, 4) float32 xyxy px, ``scores`` (B, K) float32, ``labels``
(B, K) int64, sorted by score. Two-stage models need at least ``num_queries`` input tokens (all levels together).
"""

from __future__ import annotations

import json
import math

import torch
from torch import Tensor, nn

from vitkit.core.trace import check_traceable, dummy_inputs, pad_to_multiple, trace_multiple

INPUTS, OUTPUTS = ["images", "mask", "orig_sizes"], ["boxes", "scores", "labels"]
DYNAMIC_AXES = {"images": {0: "batch", 2: "height", 3: "width"}, "mask": {0: "batch", 1: "height", 2: "width"},
                "orig_sizes": {0: "batch"}, "boxes": {0: "batch"}, "scores": {0: "batch"}, "labels": {0: "batch"}}


# ------------------------------------------------------------------------------------------------ the graph
class DetectorExport(nn.Module):
    """A DETR (eval mode) and its :class:`~vitkit.detection.PostProcess` as one traceable graph with tensor outputs."""
    def __init__(self, model: nn.Module, postprocess: nn.Module) -> None:
        super().__init__()
        check_traceable(model.encoder)
        self.model, self.postprocess = model, postprocess
        self.multiple = trace_multiple(model.encoder)

    def forward(self, images: Tensor, mask: Tensor, orig_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Detect from (B, 3, H, W) normalised zero-padded images, a (B, H, W) bool mask (True = padding) and
        (B, 2) [h, w] original sizes in pixels.

        Returns:
            boxes (B, K, 4) xyxy pixels of the original images, scores (B, K), labels (B, K) int64.
        """
        images, mask = pad_to_multiple(images, mask, self.multiple)
        out = self.model(images, mask)
        scores, labels, boxes = self.postprocess.batched(out["pred_logits"], out["pred_boxes"], orig_sizes)
        return boxes, scores, labels


def graph(detector: nn.Module) -> DetectorExport:
    """The traceable graph of a :class:`~vitkit.detection.predictor.Detector`, in eval mode."""
    return DetectorExport(detector.model, detector.postprocess).eval()


def trace_inputs(batch: int, height: int, width: int, stride: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """The graph's dummy inputs: :func:`~vitkit.core.trace.dummy_inputs` and random original sizes (B, 2)."""
    images, mask = dummy_inputs(batch, height, width, stride, seed)
    g = torch.Generator().manual_seed(seed + 1)
    sizes = torch.stack((torch.randint(height // 2, 2 * height, (batch,), generator=g),
                         torch.randint(width // 2, 2 * width, (batch,), generator=g)), dim=1)  # (B, 2) [h, w]
    return images, mask, sizes


def check_trace(wrapper: DetectorExport, inputs: tuple[Tensor, ...]) -> None:
    """Two-stage selection keeps ``num_queries`` tokens; a trace with fewer would freeze a repeat pattern."""
    model = wrapper.model
    if not getattr(model, "two_stage", False):
        return
    with torch.no_grad():
        out = model(*pad_to_multiple(inputs[0], inputs[1], wrapper.multiple))
    n = out["enc_outputs"]["pred_logits"].shape[1]
    if n < model.num_queries:
        raise ValueError(f"trace size {tuple(inputs[0].shape[-2:])} gives {n} memory tokens, fewer than the "
                         f"{model.num_queries} queries two-stage selection keeps; trace with a larger size")


def onnx_metadata(detector: nn.Module) -> dict[str, str]:
    """The detection entries of the graph's metadata: class names, category ids, what the outputs are."""
    return {"class_names": json.dumps(detector.class_names), "label_to_cat_id": json.dumps(detector.label_to_cat_id),
            "outputs": "boxes (B, K, 4) xyxy pixels of orig_sizes; scores (B, K); labels (B, K) contiguous labels "
                       "(label_to_cat_id maps them to dataset category ids)"}


# ------------------------------------------------------------------------------------------------ comparison
def compare_detections(ref: tuple[Tensor, Tensor, Tensor], got: tuple, orig_sizes: Tensor,
                       tie: float = 1e-5) -> dict[str, float]:
    """Largest differences between two detectors' (boxes, scores, labels), tolerant to near-tie re-ordering.

    A box is compared with the same-label box of the other side whose score lies within ``tie`` of its own.

    Args:
        ref, got: boxes (B, K, 4) xyxy px, scores (B, K), labels (B, K); tensors or numpy arrays.
        orig_sizes: (B, 2) [h, w].
        tie: score difference under which two detections count as tied.

    Returns:
        ``scores``: max abs difference; ``boxes_px``: max abs difference in pixels; ``boxes``: the same as a
        fraction of the image width/height; ``labels``: fraction of detections whose label has no match.
    """
    rb, rs, rl = (torch.as_tensor(t) for t in ref)
    gb, gs, gl = (torch.as_tensor(t) for t in got)
    if rb.shape != gb.shape or rs.shape != gs.shape:
        raise ValueError(f"shapes differ: boxes {tuple(rb.shape)} vs {tuple(gb.shape)}, scores {tuple(rs.shape)} vs "
                         f"{tuple(gs.shape)}")
    rb, gb, rs, gs = rb.double(), gb.double(), rs.double(), gs.double()
    scale = orig_sizes.double().flip(-1).repeat(1, 2)[:, None]  # (B, 1, 4) w, h, w, h
    close = (rs[:, :, None] - gs[:, None, :]).abs() <= tie  # (B, K, K)
    same = rl[:, :, None] == gl[:, None, :]  # (B, K, K)
    dist = (rb[:, :, None] - gb[:, None, :]).abs().amax(-1)  # (B, K, K) pixels
    dist = dist.masked_fill(~(close & same), math.inf).amin(-1)  # (B, K)
    unmatched = torch.isinf(dist)
    rel = ((rb[:, :, None] - gb[:, None, :]).abs() / scale[:, :, None].clamp(min=1)).amax(-1)  # (B, K, K)
    rel = rel.masked_fill(~(close & same), math.inf).amin(-1)  # (B, K)
    return {"scores": float((rs - gs).abs().max()) if rs.numel() else 0.0,
            "boxes_px": float(dist[~unmatched].max()) if (~unmatched).any() else 0.0,
            "boxes": float(rel[~unmatched].max()) if (~unmatched).any() else 0.0,
            "labels": float(unmatched.double().mean()) if unmatched.numel() else 0.0}


def compare(reference: tuple, got: tuple, inputs: tuple[Tensor, ...]) -> dict[str, float]:
    """:func:`compare_detections` of the graph's outputs on ``inputs`` (their ``orig_sizes`` scale the boxes)."""
    return compare_detections(reference, got, inputs[2])
