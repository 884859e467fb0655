"""Pictures of what the models look at, and precision-recall curves; matplotlib, saved as PNG.

- :func:`detection_attention` / :func:`plot_detection_attention`: for each box a detector keeps, its query's
  cross-attention in the last decoder layer. Global attention: the attention weights (heads averaged) as a
  heatmap over the image; deformable attention (:class:`~vitkit.models.deformable.MSDeformableAttention`): the
  sampling points of every head and level, sized and coloured by their attention weights.
- :func:`caption_attention` / :func:`plot_caption_attention`: for each generated token, the last decoder
  layer's cross-attention over the image when that token was predicted.
- :func:`coco_precision` / :func:`plot_pr_curves`: per-class precision-recall curves from COCOeval's
  ``eval["precision"]`` array, at IoU 0.5 and averaged over IoU 0.5:0.95 (``tools/plot_pr.py``).
- :func:`attention_folder`: the attention pictures of every image in a folder (``--attention`` of
  ``tools/detect.py`` and ``tools/caption.py``).

How the weights are read without touching the models: attention runs through ``F.scaled_dot_product_attention``,
which returns no weights, so :class:`AttentionRecorder` puts a forward hook on a
:class:`~vitkit.layers.MultiheadAttention` and recomputes ``softmax(q k^T / sqrt(d) + mask)`` from the call's
inputs with the module's own projections and mask builder (for a KV-cached call, from the cache); the test checks
that ``weights @ v`` projected gives the module's output. For deformable attention a hook recomputes the sampling
locations and weights from the query and reference boxes, as :meth:`MSDeformableAttention.forward` does (three
lines, repeated here). Detection runs one image at a time (no batch padding); token grids are mapped onto the
image through the patch stride (level ``l`` of a multi-level memory at ``stride * h_0 / h_l``), and each level's
weights are divided by its token area before the levels are summed, so the heatmap is an attention density.
Captioning re-runs the generated caption through the decoder with teacher forcing, which gives the same states as
the cached step-by-step generation.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image
from torch import Tensor, nn

from vitkit.layers import MultiheadAttention
from vitkit.layers.pos_embed import apply_rope
from vitkit.models.deformable import MSDeformableAttention

DISPLAY_SIZE = 480  # long side in px of the pictures' image panels
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")


# ----------------------------------------------------------------------------------------------- recording
class AttentionRecorder:
    """Record the attention weights of every call of a :class:`MultiheadAttention` (a context manager).

    Attributes:
        weights: one (B, heads, Tq, Tk) float32 tensor per call, rows summing to 1 (masked keys get 0).
    """

    def __init__(self, module: MultiheadAttention) -> None:
        if not isinstance(module, MultiheadAttention):
            raise TypeError(f"expected a vitkit MultiheadAttention, got {type(module).__name__}")
        self.module = module
        self.weights: list[Tensor] = []
        self._handle = None

    def __enter__(self) -> AttentionRecorder:
        self._handle = self.module.register_forward_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()

    @torch.no_grad()
    def _hook(self, module: MultiheadAttention, args: tuple, kwargs: dict, output: Tensor) -> None:
        names = ("query", "key", "value")
        given = dict(zip(names, args, strict=False)) | {k: kwargs[k] for k in names if k in kwargs}
        query = given["query"]
        key = query if given.get("key") is None else given["key"]
        rope, rope_k, cache = kwargs.get("rope"), kwargs.get("rope_k"), kwargs.get("cache")
        q = module.q_norm(module._heads(module._project(query, None, None)[0]))  # (B, H, Tq, hd)
        if rope is not None:
            q = apply_rope(q, rope)
        if cache is not None and cache.k is not None:  # the forward has filled the cache: all keys so far
            k = cache.k  # (B, H, Tk, hd)
        else:
            D, w, b = module.dim, module.qkv.weight, module.qkv.bias
            k = module.k_norm(module._heads(F.linear(key, w[D: 2 * D], None if b is None else b[D: 2 * D])))
            if rope is not None or rope_k is not None:
                k = apply_rope(k, rope_k if rope_k is not None else rope)
        is_causal = bool(kwargs.get("is_causal", False))
        past = k.shape[2] - q.shape[2] if (is_causal and cache is not None and not cache.static) else 0
        mask = module._build_mask(q, k, kwargs.get("key_padding_mask"), kwargs.get("attn_mask"),
                                  kwargs.get("attn_bias"), is_causal, past)
        if mask is None and is_causal and q.shape[2] > 1:  # SDPA's own causal mask
            mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
        scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(module.head_dim)  # (B, H, Tq, Tk)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
        self.weights.append(scores.softmax(-1))


class _Capture:
    """Forward hooks that keep each module's last (args, kwargs, output); removed on exit."""

    def __init__(self, modules: Mapping[str, nn.Module | None]) -> None:
        self.modules = {k: m for k, m in modules.items() if m is not None}
        self.calls: dict[str, tuple[tuple, dict, Any]] = {}
        self._handles: list = []

    def __enter__(self) -> _Capture:
        for name, module in self.modules.items():
            def hook(mod, args, kwargs, output, name=name):
                self.calls[name] = (args, kwargs, output)
            self._handles.append(module.register_forward_hook(hook, with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()


def deformable_sampling(module: MSDeformableAttention, query: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
    """Where and how much a deformable attention call looks: the computation of its forward, without sampling.

    Args:
        module: the deformable cross-attention.
        query: (B, Q, D) its query input; reference: (B, Q, 4) cxcywh boxes, normalised to the unpadded image.

    Returns:
        locations (B, Q, H, L, P, 2) as (x, y) in [0, 1] of the unpadded image, weights (B, Q, H, L, P) summing
        to 1 over L and P for each head.
    """
    B, Q, _ = query.shape
    H, L, P = module.num_heads, module.num_levels, module.num_points
    off = module.sampling_offsets(query).float().view(B, Q, H, L, P, 2)
    weights = module.attention_weights(query).float().view(B, Q, H, L * P).softmax(-1).view(B, Q, H, L, P)
    ref = reference.float()[:, :, None, None, None, :]  # (B, Q, 1, 1, 1, 4)
    return ref[..., :2] + off / P * ref[..., 2:] * 0.5, weights  # (B, Q, H, L, P, 2)


def _grid_stride(encoder: nn.Module) -> float:
    pe = encoder.patch_embed
    return float(getattr(pe, "stride", getattr(pe, "patch_size", 16)))


def levels_to_image(weights: Tensor, shapes: Sequence[tuple[int, int]], strides: Sequence[float],
                    resized_hw: tuple[int, int], out_hw: tuple[int, int]) -> Tensor:
    """Attention over concatenated token grids -> an attention density over the image.

    Args:
        weights: (K, N) weights over the grids' tokens (prefix tokens removed), N = sum(h * w).
        shapes: (h, w) per grid; strides: its stride in px of the resized image.
        resized_hw: (H, W) of the resized image the model saw (the grids cover it from the top-left corner).
        out_hw: (H, W) of the output map (the displayed image, any scale).

    Returns:
        (K, H_out, W_out): each grid's weights divided by its token area (bilinearly interpolated at the pixel
        centres), summed over the grids.
    """
    K = weights.shape[0]
    (Hr, Wr), (Ho, Wo) = resized_hw, out_hw
    ys = (torch.arange(Ho, dtype=torch.float32) + 0.5) * (Hr / Ho)  # (Ho,) resized px
    xs = (torch.arange(Wo, dtype=torch.float32) + 0.5) * (Wr / Wo)  # (Wo,)
    total, start = torch.zeros(K, Ho, Wo), 0
    for (h, w), s in zip(shapes, strides, strict=True):
        level = weights[:, start:start + h * w].float().reshape(K, 1, h, w) * (h * w)  # (K, 1, h, w) density
        gy, gx = ys / (s * h) * 2 - 1, xs / (s * w) * 2 - 1  # grid_sample coordinates (align_corners=False)
        grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)  # (Ho, Wo, 2) as (x, y)
        total += F.grid_sample(level.cpu(), grid[None].expand(K, -1, -1, -1), mode="bilinear",
                               padding_mode="border", align_corners=False)[:, 0]  # (K, Ho, Wo)
        start += h * w
    return total


# ----------------------------------------------------------------------------------------------- inputs
def _rgb(image: str | os.PathLike | Image.Image | Tensor) -> Image.Image:
    from vitkit.data.folder import load_rgb

    if isinstance(image, str | os.PathLike):
        return load_rgb(image)
    if isinstance(image, Tensor):
        t = image if image.dtype == torch.uint8 else (image.clamp(0, 1) * 255).round().to(torch.uint8)
        return Image.fromarray(t.permute(1, 2, 0).cpu().numpy())  # (H, W, 3)
    return image if image.mode == "RGB" else image.convert("RGB")


def _display(img: Image.Image, size: int = DISPLAY_SIZE) -> np.ndarray:
    """The image scaled so its long side is ``size`` px: (H, W, 3) uint8."""
    scale = size / max(img.size)
    w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
    return np.asarray(img.resize((w, h), Image.Resampling.BILINEAR if scale < 1 else Image.Resampling.NEAREST))


# ----------------------------------------------------------------------------------------------- detection
@dataclass
class DetectionAttention:
    """The kept boxes of one image and where their queries looked (coordinates in px of ``image``).

    Attributes:
        image: (H, W, 3) uint8, the input scaled for display (long side :data:`DISPLAY_SIZE`).
        scale: display px per original px.
        boxes: (K, 4) xyxy; scores (K,); labels (K,) contiguous; names: K class names; queries: K query indices.
        kind: "global" or "deformable".
        maps: global: (K, H, W) attention density over ``image`` (heads averaged); else None.
        points: deformable: K arrays (heads x levels x points, 2) of (x, y) sampling locations; else empty.
        point_weights: deformable: K arrays of their weights (averaged over heads: each array sums to 1).
        references: deformable: (K, 4) xyxy reference boxes the points were placed around (the last layer's
            input boxes; the drawn ``boxes`` are its refined output); else None.
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
    """Run a :class:`~vitkit.inference.Detector` on one image and read its last decoder layer's cross-attention.

    Args:
        detector: from :func:`vitkit.load`.
        image: a path, an RGB PIL image or a (3, H, W) uint8 tensor.
        score_threshold: keep queries whose best class scores at least this (softmax heads: the best class other
            than no-object; sigmoid heads: the best sigmoid), as :class:`~vitkit.detection.PostProcess` does.
        max_boxes: at most this many boxes, best first.

    Returns:
        A :class:`DetectionAttention`.
    """
    model = detector.model
    img = _rgb(image)
    batch, mask, _ = detector.preprocess([img])  # (1, 3, h, w), (1, h, w)
    device = next(model.parameters()).device
    last = model.decoder.layers[-1].cross_attn
    deformable = isinstance(last, MSDeformableAttention)
    was_training = model.training
    model.eval()
    try:
        with contextlib.ExitStack() as stack:
            calls = stack.enter_context(_Capture({"encoder": model.encoder, "finer": getattr(model, "finer", None),
                                                  "coarser": getattr(model, "coarser", None),
                                                  "cross": last if deformable else None}))
            recorder = None if deformable else stack.enter_context(AttentionRecorder(last))
            out = model(batch.to(device), mask.to(device))
    finally:
        model.train(was_training)
    logits = out["pred_logits"][0].float()  # (Q, C[+1])
    probs = logits.sigmoid() if detector.postprocess.use_focal else logits.softmax(-1)[:, :-1]
    scores, labels = probs.max(-1)  # (Q,)
    order = scores.argsort(descending=True)
    keep = order[scores[order] >= score_threshold][:max_boxes]  # (K,)

    shown = _display(img)
    Hd, Wd = shown.shape[:2]
    boxes = out["pred_boxes"][0, keep].float().cpu()  # (K, 4) cxcywh in [0, 1]
    xyxy = _xyxy(boxes, Wd, Hd)  # (K, 4) display px
    lab = labels[keep].cpu()
    names = [detector.class_names[j] for j in lab.tolist()] if detector.class_names else [str(j) for j in lab.tolist()]
    result = DetectionAttention(shown, Wd / img.width, xyxy.numpy(), scores[keep].cpu().numpy(), lab.numpy(), names,
                                keep.tolist(), "deformable" if deformable else "global")
    if deformable:
        args, kwargs, _ = calls.calls["cross"]
        loc, w = deformable_sampling(last, args[0], kwargs["reference"])  # (1, Q, H, L, P, 2), (1, Q, H, L, P)
        result.references = _xyxy(kwargs["reference"][0, keep].float().cpu(), Wd, Hd).numpy()
        for q in keep.tolist():
            xy = loc[0, q].reshape(-1, 2).cpu() * torch.tensor([Wd, Hd])  # (H*L*P, 2) display px
            result.points.append(xy.numpy())
            result.point_weights.append((w[0, q].reshape(-1).cpu() / last.num_heads).numpy())
        return result
    enc = calls.calls["encoder"][2]
    shapes, s0 = [tuple(enc.grid)], _grid_stride(model.encoder)
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
    half = cxcywh[:, 2:] / 2
    return torch.cat((cxcywh[:, :2] - half, cxcywh[:, :2] + half), -1) * torch.tensor([width, height, width, height])


def _image_axes(ax, image: np.ndarray, title: str) -> None:
    ax.imshow(image)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def _box(ax, box: np.ndarray, colour: str, label: str | None = None, linestyle: str = "-") -> None:
    x0, y0, x1, y1 = (float(v) for v in box)
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=2,
                           linestyle=linestyle))
    if label:
        ax.text(x0, y0, label, color="white", fontsize=7, va="bottom",
                bbox={"facecolor": colour, "edgecolor": "none", "pad": 1, "alpha": 0.9})


def _grid_figure(panels: int, cols: int, aspect: float) -> tuple[Figure, list]:
    cols = max(1, min(cols, panels))
    rows = -(-panels // cols)
    fig = Figure(figsize=(3.2 * cols, 3.2 * rows * aspect + 0.4), dpi=100, layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel().tolist()
    for ax in axes[panels:]:
        ax.axis("off")
    return fig, axes


def plot_detection_attention(att: DetectionAttention, path: str | os.PathLike, cols: int = 4) -> Path:
    """Save a PNG: the image with every kept box, then one panel per box with its query's attention.

    Global attention: a heatmap (``jet``, normalised to its maximum) over the image; deformable attention: the
    sampling points, sized and coloured (``plasma``) by weight, around the reference box (dashed, white). The box
    is drawn in its class colour, the title gives the class, the score and the query index.
    """
    H, W = att.image.shape[:2]
    fig, axes = _grid_figure(1 + len(att.boxes), cols, H / W)
    title = f"{len(att.boxes)} boxes ({att.kind} cross-attention)" if len(att.boxes) else "no box above the threshold"
    _image_axes(axes[0], att.image, title)
    for k, box in enumerate(att.boxes):
        colour = PALETTE[int(att.labels[k]) % len(PALETTE)]
        _box(axes[0], box, colour, f"{att.names[k]} {att.scores[k]:.2f}")
        ax = axes[k + 1]
        _image_axes(ax, att.image, f"{att.names[k]} {att.scores[k]:.2f} (query {att.queries[k]})")
        if att.maps is not None:
            heat = att.maps[k] / max(float(att.maps[k].max()), 1e-12)
            ax.imshow(heat, cmap="jet", alpha=0.5, vmin=0, vmax=1, extent=(0, W, H, 0))
        else:
            w = att.point_weights[k]
            ax.scatter(att.points[k][:, 0], att.points[k][:, 1], s=8 + 400 * w / max(float(w.max()), 1e-12), c=w,
                       cmap="plasma", edgecolors="white", linewidths=0.4)
            _box(ax, att.references[k], "white", linestyle="--")
            ax.set_xlim(0, W)
            ax.set_ylim(H, 0)
        _box(ax, box, colour)
    return _save(fig, path)


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


# ----------------------------------------------------------------------------------------------- captioning
@dataclass
class CaptionAttention:
    """A generated caption and where each of its tokens looked.

    Attributes:
        image: (H, W, 3) uint8, the input scaled for display.
        caption: the decoded caption.
        tokens: the generated tokens as text, EOS last (``[EOS]``) when generated.
        maps: (T, H, W) cross-attention density over ``image`` (heads averaged) of the query that predicted each
            token.
    """

    image: np.ndarray
    caption: str
    tokens: list[str]
    maps: np.ndarray


def _token_text(tokenizer: Any, token: int) -> str:
    if token == tokenizer.eos_id:
        return "[EOS]"
    return tokenizer.tokenizer.decode([token], skip_special_tokens=False).strip() or \
        str(tokenizer.tokenizer.id_to_token(token))


@torch.no_grad()
def caption_attention(pipeline: nn.Module, image: str | os.PathLike | Image.Image | Tensor,
                      **generation: Any) -> CaptionAttention:
    """Caption one image with a :class:`~vitkit.captioning.pipeline.CaptionPipeline` and read, for each generated
    token, the last decoder layer's cross-attention of the position that predicted it.

    Args:
        pipeline: from :func:`vitkit.load`.
        image: a path, an RGB PIL image or a (3, H, W) uint8 tensor.
        **generation: options of ``CaptionPipeline.generate`` (method, num_beams, max_length, ...).

    Returns:
        A :class:`CaptionAttention`.
    """
    cap, tok = pipeline.captioner, pipeline.tokenizer
    img = _rgb(image)
    batch, mask = pipeline.preprocess([img])  # (1, 3, h, w), (1, h, w)
    opts = pipeline.generation_options(**generation)
    device = pipeline.device
    was_training = cap.training
    cap.eval()
    try:
        ids, _ = cap.generate(batch.to(device), mask.to(device), **opts)  # (1, T)
        seq = ids[0].tolist()
        end = seq.index(tok.eos_id) + 1 if tok.eos_id in seq else len(seq)
        while end > 1 and seq[end - 1] == tok.pad_id:
            end -= 1
        seq = seq[:end]
        with _Capture({"encoder": cap.encoder}) as calls, AttentionRecorder(cap.decoder.layers[-1].cross_attn) as rec:
            memory, memory_mask, memory_pos = cap.encode(batch.to(device), mask.to(device))
            cap.decode_tokens(torch.tensor([seq], device=device), memory, memory_mask, memory_pos)
    finally:
        cap.train(was_training)
    enc = calls.calls["encoder"][2]
    attn = rec.weights[-1][0].mean(0)[: len(seq) - 1, enc.num_prefix:]  # (T-1, N): row t predicted token t+1
    shown = _display(img)
    maps = levels_to_image(attn, [tuple(enc.grid)], [_grid_stride(cap.encoder)], tuple(batch.shape[-2:]),
                           shown.shape[:2])
    return CaptionAttention(shown, tok.decode(seq), [_token_text(tok, t) for t in seq[1:]], maps.numpy())


def plot_caption_attention(att: CaptionAttention, path: str | os.PathLike, cols: int = 5) -> Path:
    """Save a PNG: the image titled with the caption, then one small heatmap per generated token, titled with it."""
    H, W = att.image.shape[:2]
    fig, axes = _grid_figure(1 + len(att.tokens), cols, H / W)
    _image_axes(axes[0], att.image, "\n".join(textwrap.wrap(att.caption or "(empty caption)", 34)))
    for t, token in enumerate(att.tokens):
        heat = att.maps[t] / max(float(att.maps[t].max()), 1e-12)
        _image_axes(axes[t + 1], att.image, f"{t + 1}: {token}")
        axes[t + 1].imshow(heat, cmap="jet", alpha=0.55, vmin=0, vmax=1, extent=(0, W, H, 0))
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------- PR curves
def coco_precision(gt: str | os.PathLike, results: str | os.PathLike | Sequence[Mapping[str, Any]],
                   backend: str = "pycocotools") -> tuple[np.ndarray, dict[str, Any]]:
    """COCOeval's accumulated precision array of a bbox evaluation, with what indexes it.

    Args:
        gt: COCO instances JSON; results: COCO results JSON or a list of result dicts (validated as
            :func:`vitkit.eval.coco_eval.evaluate_coco` does); backend: "pycocotools" or "faster".

    Returns:
        ``precision`` (T, R, K, A, M) (-1 where a class has no ground truth), and ``meta``: ``iou_thrs`` (T,),
        ``rec_thrs`` (R,), ``cat_ids`` (K,), ``cat_names`` (K,), ``area_rng`` (A labels), ``max_dets`` (M,).

    Raises:
        FileNotFoundError, ValueError: as :func:`~vitkit.eval.coco_eval.evaluate_coco`, and for empty results.
    """
    from vitkit.eval.coco_eval import load_gt, load_results, validate_results

    coco = load_gt(gt, backend)
    dets = load_results(results) if isinstance(results, str | os.PathLike) else validate_results(results)
    if not dets:
        raise ValueError("no detections: nothing to draw precision-recall curves from")
    known = set(coco.getImgIds())
    bad = next((d["image_id"] for d in dets if d["image_id"] not in known), None)
    if bad is not None:
        raise ValueError(f"image_id {bad} of the results is not an image of the annotation file")
    with contextlib.redirect_stdout(io.StringIO()):
        dt = coco.loadRes(copy.deepcopy(dets))
        if backend == "faster":
            from faster_coco_eval import COCOeval_faster

            ev = COCOeval_faster(coco, dt, iouType="bbox", print_function=lambda *a, **k: None)
        else:
            from pycocotools.cocoeval import COCOeval

            ev = COCOeval(coco, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
    p = ev.params
    cats = {c["id"]: c["name"] for c in coco.loadCats(list(p.catIds))}
    meta = {"iou_thrs": np.asarray(p.iouThrs), "rec_thrs": np.asarray(p.recThrs), "cat_ids": list(p.catIds),
            "cat_names": [str(cats.get(c, c)) for c in p.catIds], "area_rng": list(p.areaRngLbl),
            "max_dets": list(p.maxDets)}
    return np.asarray(ev.eval["precision"]), meta


def plot_pr_curves(precision: np.ndarray, path: str | os.PathLike, rec_thrs: np.ndarray | None = None,
                   iou_thrs: np.ndarray | None = None, class_names: Sequence[str] | None = None,
                   area: int = 0, max_det: int = -1) -> Path:
    """Save a PNG of per-class precision-recall curves: left at IoU 0.5, right averaged over IoU 0.5:0.95.

    Args:
        precision: COCOeval's ``eval["precision"]`` (T, R, K, A, M), -1 where undefined.
        path: the PNG to write.
        rec_thrs: (R,) recall thresholds (default COCO's 0:0.01:1); iou_thrs: (T,) (default 0.5:0.05:0.95).
        class_names: K names for the legend (default the class index).
        area: area-range index (0 = all); max_det: maxDets index (-1 = the largest, 100).

    Returns:
        ``path``. Classes without ground truth (all -1) are left out; the legend gives each class's AP (the
        mean of its curve).
    """
    T, R, K = precision.shape[:3]
    rec = np.linspace(0, 1, R) if rec_thrs is None else np.asarray(rec_thrs)
    ious = np.linspace(0.5, 0.95, T) if iou_thrs is None else np.asarray(iou_thrs)
    names = [str(k) for k in range(K)] if class_names is None else list(class_names)
    t50 = int(np.argmin(np.abs(ious - 0.5)))
    fig = Figure(figsize=(11, 4.6), dpi=100, layout="constrained")
    axes = fig.subplots(1, 2)
    curves = precision[:, :, :, area, max_det]  # (T, R, K)
    for ax, title, which in ((axes[0], f"IoU={ious[t50]:.2f}", "50"), (axes[1], "IoU=0.50:0.95 (mean)", "avg")):
        drawn = 0
        for k in range(K):
            pk = curves[:, :, k]  # (T, R)
            if not (pk > -1).any():
                continue
            if which == "50":
                y = np.where(pk[t50] > -1, pk[t50], np.nan)
            else:
                valid = np.where(pk > -1, pk, np.nan)
                y = np.nanmean(valid, axis=0) if np.isfinite(valid).any() else np.full(R, np.nan)
            ap = float(np.nanmean(y)) if np.isfinite(y).any() else float("nan")
            ax.plot(rec, y, color=PALETTE[k % len(PALETTE)] if len(PALETTE) >= K else None, linewidth=1.5,
                    label=f"{names[k]} (AP {ap:.3f})")
            drawn += 1
        ax.set_title(title)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=7 if drawn > 10 else 9, loc="lower left", ncol=1 + drawn // 20)
        else:
            ax.text(0.5, 0.5, "no class with ground truth", ha="center", va="center")
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------- folders
def attention_name(rel: str) -> str:
    """Picture name for the input ``rel``: ``a.png`` stays, anything else gets ``.png`` appended."""
    return rel if rel.lower().endswith(".png") else f"{rel}.png"


def attention_folder(model: nn.Module, folder: str | os.PathLike, out_dir: str | os.PathLike, *,
                     recursive: bool = True, size_hints: Mapping[str, tuple[int, int]] | None = None,
                     score_threshold: float = 0.5, progress: bool = False,
                     **generation: Any) -> tuple[int, list[tuple[str, str]]]:
    """Write the attention picture of every readable image of ``folder`` under ``out_dir`` (same relative path,
    named by :func:`attention_name`).

    Args:
        model: a :class:`~vitkit.inference.Detector` (one panel per box above ``score_threshold``) or a
            :class:`~vitkit.captioning.pipeline.CaptionPipeline` (one panel per token; ``generation`` options).
        folder, recursive, size_hints: as :class:`~vitkit.data.folder.ImageFolder`.
        progress: show a progress bar on stderr.

    Returns:
        (pictures written, [(file, reason)] of the images that could not be read or drawn).
    """
    from vitkit.captioning.pipeline import CaptionPipeline
    from vitkit.data.folder import ImageFolder, progress_bar
    from vitkit.inference import Detector

    if not isinstance(model, Detector | CaptionPipeline):
        raise TypeError(f"expected a Detector or a CaptionPipeline, got {type(model).__name__}")
    if Path(out_dir).resolve() == Path(folder).resolve():
        raise ValueError(f"--attention {out_dir} is the image folder: the pictures would overwrite the images")
    dataset = ImageFolder(folder, recursive=recursive, size_hints=size_hints)
    written, failures = 0, []
    with progress_bar("attention", progress) as bar:
        task = bar.add_task("attention", total=len(dataset))
        for i in range(len(dataset)):
            record = dataset[i]
            bar.advance(task)
            if record["error"] is not None:
                failures.append((record["file"], record["error"]))
                continue
            dest = Path(out_dir) / attention_name(record["file"])
            try:
                if isinstance(model, Detector):
                    plot_detection_attention(detection_attention(model, record["image"], score_threshold), dest)
                else:
                    plot_caption_attention(caption_attention(model, record["image"], **generation), dest)
            except Exception as err:  # one picture that cannot be made costs only itself
                failures.append((record["file"], f"attention picture failed: {type(err).__name__}: {err}"))
                continue
            written += 1
    return written, failures
