"""Detection cross-attention pictures: for each box a detector keeps, its query's last-layer cross-attention.

Global attention: head-averaged weights as a density heatmap over the image (each level's weights divided by its
token area); deformable attention: every head's and level's sampling points with their weights. One image at a time.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torchvision.ops import box_convert

from vitkit.layers.deformable import MSDeformableAttention
from vitkit.viz.draw import PALETTE, box, display, grid_figure, heatmap, image_axes, rgb, save
from vitkit.viz.recording import (
    AttentionRecorder,
    Capture,
    eval_mode,
    grid_stride,
    levels_to_image,
)


@dataclass
class DetectionAttention:
    """The kept boxes of one image and where their queries looked (coordinates in px of ``image``).

    Attributes:
        image: (H, W, 3) uint8, the input scaled for display (long side :data:`~vitkit.viz.draw.DISPLAY_SIZE`).
        scale: display px per original px.
        boxes: (K, 4) xyxy; scores (K,); labels (K,) contiguous; names: K class names; queries: K query indices.
        kind: "global" or "deformable".
        maps: global: (K, H, W) attention density over ``image`` (heads averaged); else None.
        points: deformable: K arrays (heads x levels x points, 2) of (x, y) sampling locations; else empty.
        point_weights: deformable: K arrays of their weights (averaged over heads: each array sums to 1).
        references: deformable: (K, 4) xyxy reference boxes the points were placed around (the last layer's
            input boxes); else None.
    """
    image: np.ndarray
    scale: float
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    names: list[str]
    queries: list[int]
    kind: str
    maps: np.ndarray | None = None
    points: list[np.ndarray] = field(default_factory=list)
    point_weights: list[np.ndarray] = field(default_factory=list)
    references: np.ndarray | None = None


@torch.no_grad()
def detection_attention(detector: nn.Module, image: str | os.PathLike | Image.Image | Tensor,
                        score_threshold: float = 0.5, max_boxes: int = 12) -> DetectionAttention:
    """Run a :class:`~vitkit.detection.predictor.Detector` (from :func:`vitkit.load`) on one image (a path, an RGB
    PIL image or a (3, H, W) uint8 tensor) and read its last decoder layer's cross-attention into a
    :class:`DetectionAttention`: at most ``max_boxes`` boxes, best first, whose best class (softmax: other than
    no-object) scores at least ``score_threshold``."""
    model = detector.model
    img = rgb(image)
    batch, mask, _ = detector.preprocess([img])  # (1, 3, h, w), (1, h, w)
    last = model.decoder.layers[-1].cross_attn
    deformable = isinstance(last, MSDeformableAttention)
    with eval_mode(model), contextlib.ExitStack() as stack:
        calls = stack.enter_context(Capture({"encoder": model.encoder, "finer": getattr(model, "finer", None),
                                             "coarser": getattr(model, "coarser", None),
                                             "cross": last if deformable else None}))
        recorder = None if deformable else stack.enter_context(AttentionRecorder(last))
        out = detector.run(batch, mask)  # float32 outputs, whatever the detector's dtype
    logits = out["pred_logits"][0]  # (Q, C[+1])
    probs = logits.sigmoid() if detector.postprocess.sigmoid else logits.softmax(-1)[:, :-1]
    scores, labels = probs.max(-1)  # (Q,)
    order = scores.argsort(descending=True)
    keep = order[scores[order] >= score_threshold][:max_boxes]  # (K,)

    shown = display(img)
    Hd, Wd = shown.shape[:2]
    boxes = out["pred_boxes"][0, keep].cpu()  # (K, 4) cxcywh in [0, 1]
    xyxy = _xyxy(boxes, Wd, Hd)  # (K, 4) display px
    lab = labels[keep].cpu()
    names = detector.label_text(lab.tolist())
    result = DetectionAttention(shown, Wd / img.width, xyxy.numpy(), scores[keep].cpu().numpy(), lab.numpy(), names,
                                keep.tolist(), "deformable" if deformable else "global")
    if deformable:
        args, kwargs, _ = calls.calls["cross"]
        loc, w = last.sampling(args[0], kwargs["reference"])  # (1, Q, H, L, P, 2), (1, Q, H, L, P)
        result.references = _xyxy(kwargs["reference"][0, keep].float().cpu(), Wd, Hd).numpy()
        for q in keep.tolist():
            xy = loc[0, q].reshape(-1, 2).cpu() * torch.tensor([Wd, Hd])  # (H*L*P, 2) display px
            result.points.append(xy.numpy())
            result.point_weights.append((w[0, q].reshape(-1).cpu() / last.num_heads).numpy())
        return result
    enc = calls.calls["encoder"][2]
    shapes, s0 = [tuple(enc.grid)], grid_stride(model.encoder)
    for name in ("finer", "coarser"):  # memory order: encoder grid, finer, coarser
        if name in calls.calls:
            shapes.append(tuple(calls.calls[name][2][0].shape[1:3]))
    strides = [s0 * shapes[0][0] / h for h, _ in shapes]
    attn = recorder.weights[-1][0].mean(0)  # (Q, P+N) heads averaged
    grid_w = attn[keep, enc.num_prefix:]  # (K, N)
    result.maps = levels_to_image(grid_w, shapes, strides, tuple(batch.shape[-2:]), (Hd, Wd)).numpy()
    return result


def _xyxy(cxcywh: Tensor, width: int, height: int) -> Tensor:
    """(K, 4) normalised cxcywh -> (K, 4) xyxy px of a width x height image."""
    return box_convert(cxcywh, "cxcywh", "xyxy") * torch.tensor([width, height, width, height])


def plot_detection_attention(att: DetectionAttention, path: str | os.PathLike, cols: int = 4) -> Path:
    """Save a PNG: the image with every kept box, then one panel per box with its query's attention (global: a
    ``jet`` heatmap normalised to its maximum; deformable: points sized and coloured by weight around the dashed
    reference box)."""
    H, W = att.image.shape[:2]
    fig, axes = grid_figure(1 + len(att.boxes), cols, H / W)
    title = f"{len(att.boxes)} boxes ({att.kind} cross-attention)" if len(att.boxes) else "no box above the threshold"
    image_axes(axes[0], att.image, title)
    for k, xyxy in enumerate(att.boxes):
        colour = PALETTE[int(att.labels[k]) % len(PALETTE)]
        box(axes[0], xyxy, colour, f"{att.names[k]} {att.scores[k]:.2f}")
        ax = axes[k + 1]
        image_axes(ax, att.image, f"{att.names[k]} {att.scores[k]:.2f} (query {att.queries[k]})")
        if att.maps is not None:
            heatmap(ax, att.maps[k], (H, W), alpha=0.5)
        else:
            w = att.point_weights[k]
            ax.scatter(att.points[k][:, 0], att.points[k][:, 1], s=8 + 400 * w / max(float(w.max()), 1e-12), c=w,
                       cmap="plasma", edgecolors="white", linewidths=0.4)
            box(ax, att.references[k], "white", linestyle="--")
            ax.set_xlim(0, W)
            ax.set_ylim(H, 0)
        box(ax, xyxy, colour)
    return save(fig, path)
