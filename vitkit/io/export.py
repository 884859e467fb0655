"""Deployment exports: ONNX graphs (detector, caption encoder) and weights-only safetensors.

ONNX graphs (fp32, CPU-traced; ``pip install 'vitkit[export]'`` brings ``onnx`` and ``onnxruntime``):

- **detector** (:class:`DetectorExport`): ``images`` (B, 3, H, W) float32, ImageNet-normalised and zero-padded;
  ``mask`` (B, H, W) bool, True = padding; ``orig_sizes`` (B, 2) int64 [h, w] of the original images ->
  ``boxes`` (B, K, 4) float32 xyxy pixels of the original images, ``scores`` (B, K) float32, ``labels`` (B, K)
  int64 contiguous labels, sorted by score. Post-processing is in the graph (:meth:`PostProcess.batched`):
  softmax heads take the best class except no-object per query, then the top K queries; sigmoid heads a top K
  over all Q*C (query, class) scores. Resizing and normalising stay outside (the graph's metadata says how).
- **caption encoder** (:class:`CaptionEncoderExport`): ``images``, ``mask`` -> ``memory`` (B, N, D),
  ``memory_mask`` (B, N) bool True = padding, ``memory_pos`` (B, N, D) cross-attention key positions: what
  :meth:`Captioner.encode` hands the decoder. Decoding (KV-cached greedy / beam / sampling) stays in PyTorch:
  :func:`decode_memory` runs it on those three arrays.

The exporter is TorchScript's tracer (``torch.onnx.export(..., dynamo=False)``), not the ``torch.export``-based
one: the models short-circuit attention masks with data-dependent branches (``mask if mask.any() else None`` in
the encoder, DETR and the captioner), which ``torch.export`` refuses (GuardOnDataDependentSymNode), while a
trace records the branch it takes. The trace is made so that the branches it records are the general ones:

- the dummy batch always has padding, so every mask branch records "use the mask" (an all-False mask at run
  time gives the same numbers as no mask);
- images are padded to a multiple of the patch size in the wrapper, in the graph, with sizes computed from the
  input shape, so a dynamic export is right at every size (the patch embedding's own "pad if needed" branch is
  then never taken);
- two-stage query selection keeps the top ``num_queries`` memory tokens: the input must hold at least that many
  tokens (all levels together), or onnxruntime's TopK fails;
- a learned position table resampled per image (``pos_embed: learned``) is data-dependent and refused; sine and
  RoPE encoders export.

Safetensors (:func:`export_safetensors`, :func:`load_safetensors`): the model's state dict (tied weights stored
once) plus string metadata: ``vitkit_task``, ``vitkit_config`` (the model's ``class_path``/``init_args`` as
JSON), ``vitkit_inference`` (preprocessing and post-processing settings as JSON) and, for captioners,
``vitkit_tokenizer`` (the tokenizer JSON). :func:`load_safetensors` rebuilds what :func:`vitkit.load` returns for
the training checkpoint: a :class:`~vitkit.detection.predictor.Detector` or a
:class:`~vitkit.captioning.predictor.CaptionPipeline`.
"""

from __future__ import annotations

import importlib
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MIN_OPSET = 16  # GridSample (deformable attention) is in ONNX from opset 16
DEFAULT_OPSET = 17  # adds LayerNormalization as one op
INSTALL_HINT = "pip install 'vitkit[export]'  (or: pip install onnx onnxruntime)"
DETECTOR_INPUTS, DETECTOR_OUTPUTS = ["images", "mask", "orig_sizes"], ["boxes", "scores", "labels"]
ENCODER_INPUTS, ENCODER_OUTPUTS = ["images", "mask"], ["memory", "memory_mask", "memory_pos"]


def require(module: str, purpose: str):
    """Import an optional export dependency, or raise ImportError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{purpose} needs the '{module}' package, which is not installed: {INSTALL_HINT}") from err


# ------------------------------------------------------------------------------------------------ wrappers
def _patch_size(encoder: nn.Module) -> int:
    """Pixels per token side that the wrapper pads to (1 for patch sources that need no padding)."""
    from vitkit.layers import PatchEmbed

    pe = encoder.patch_embed
    return pe.patch_size if isinstance(pe, PatchEmbed) else 1


def _check_encoder(encoder: nn.Module) -> None:
    from vitkit.layers import LearnedPositionEncoding2D

    if isinstance(getattr(encoder, "pos", None), LearnedPositionEncoding2D):
        raise ValueError("cannot export an encoder with pos_embed='learned' to ONNX: its table is resampled to each "
                         "image's unpadded grid with sizes read from the mask at run time, which a trace would freeze "
                         "to the dummy batch's sizes. Encoders with pos_embed 'sine' or 'rope' export.")


def _pad_to_multiple(images: Tensor, mask: Tensor, multiple: int) -> tuple[Tensor, Tensor]:
    """Zero-pad images (B, 3, H, W) and pad mask (B, H, W) with True at the bottom/right to a multiple of
    ``multiple``; the amounts are computed from the input shape, so the traced graph pads any size."""
    if multiple == 1:
        return images, mask
    H, W = images.shape[-2:]
    pad = (0, (-W) % multiple, 0, (-H) % multiple)
    return F.pad(images, pad), F.pad(mask, pad, value=True)  # (B, 3, H', W'), (B, H', W')


class DetectorExport(nn.Module):
    """A DETR and its post-processing as one traceable graph with tensor outputs.

    Args:
        model: a :class:`~vitkit.detection.DETR` in eval mode.
        postprocess: the :class:`~vitkit.detection.PostProcess` of its checkpoint.
    """
    def __init__(self, model: nn.Module, postprocess: nn.Module) -> None:
        super().__init__()
        _check_encoder(model.encoder)
        self.model, self.postprocess = model, postprocess
        self.multiple = _patch_size(model.encoder)

    def forward(self, images: Tensor, mask: Tensor, orig_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Detect.

        Args:
            images: (B, 3, H, W) normalised images, zero-padded.
            mask: (B, H, W) bool, True = padding.
            orig_sizes: (B, 2) [h, w] of the original images, in pixels.

        Returns:
            boxes (B, K, 4) xyxy pixels of the original images, scores (B, K), labels (B, K) int64.
        """
        images, mask = _pad_to_multiple(images, mask, self.multiple)
        out = self.model(images, mask)
        scores, labels, boxes = self.postprocess.batched(out["pred_logits"], out["pred_boxes"], orig_sizes)
        return boxes, scores, labels


class CaptionEncoderExport(nn.Module):
    """The image side of a :class:`~vitkit.captioning.Captioner` (:meth:`Captioner.encode`) with tensor outputs.

    Args:
        captioner: the captioner, in eval mode.
    """
    def __init__(self, captioner: nn.Module) -> None:
        super().__init__()
        _check_encoder(captioner.encoder)
        self.captioner = captioner
        self.multiple = _patch_size(captioner.encoder)

    def forward(self, images: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, 3, H, W) images, (B, H, W) mask -> memory (B, N, D), memory_mask (B, N) bool, memory_pos (B, N, D)."""
        images, mask = _pad_to_multiple(images, mask, self.multiple)
        memory, memory_mask, memory_pos = self.captioner.encode(images, mask)
        if memory_mask is None:  # nothing padded: only reachable in eager runs, the trace always has padding
            memory_mask = torch.zeros(memory.shape[:2], dtype=torch.bool, device=memory.device)
        return memory, memory_mask, memory_pos


# ------------------------------------------------------------------------------------------------ dummy data
def dummy_inputs(batch: int, height: int, width: int, stride: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A random normalised batch whose last image has padding at the bottom and the right.

    The padded strip is at least two tokens wide (``stride`` pixels per token), so every token-level mask of
    the batch holds padding and the trace records the masked branches.

    Returns:
        images (B, 3, H, W) zero over padding, mask (B, H, W) True = padding.
    """
    if min(height, width) < 3 * stride:
        raise ValueError(f"trace size {height}x{width} is too small: need at least {3 * stride} px per side "
                         f"(three tokens of {stride} px) to place padding in the dummy batch")
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, height, width, generator=g)
    mask = torch.zeros(batch, height, width, dtype=torch.bool)
    ph, pw = max(height // 4, 2 * stride), max(width // 4, 2 * stride)
    mask[-1, height - ph:] = True
    mask[-1, :, width - pw:] = True
    return images.masked_fill(mask[:, None], 0.0), mask


def _trace_stride(encoder: nn.Module) -> int:
    return int(getattr(encoder.patch_embed, "stride", 16))


# ------------------------------------------------------------------------------------------------ comparison
def compare_detections(ref: tuple[Tensor, Tensor, Tensor], got: tuple, orig_sizes: Tensor,
                       tie: float = 1e-5) -> dict[str, float]:
    """Largest differences between two detectors' (boxes, scores, labels), tolerant to near-tie re-ordering.

    Scores are sorted, so they are compared position by position. A box is compared with the box of the same
    label among the other side's detections whose score lies within ``tie`` of its own (two detections with
    almost equal scores may swap places under rounding differences).

    Args:
        ref, got: boxes (B, K, 4) xyxy px, scores (B, K), labels (B, K); tensors or numpy arrays.
        orig_sizes: (B, 2) [h, w], to express box differences as a fraction of the image.
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
    rel = ((rb[:, :, None] - gb[:, None, :]).abs() / scale[:, :, None].clamp(min=1)).amax(-1)
    rel = rel.masked_fill(~(close & same), math.inf).amin(-1)  # (B, K)
    return {"scores": float((rs - gs).abs().max()) if rs.numel() else 0.0,
            "boxes_px": float(dist[~unmatched].max()) if (~unmatched).any() else 0.0,
            "boxes": float(rel[~unmatched].max()) if (~unmatched).any() else 0.0,
            "labels": float(unmatched.double().mean()) if unmatched.numel() else 0.0}


def compare_encoder(ref: tuple, got: tuple) -> dict[str, float]:
    """Largest abs differences of (memory, memory_mask, memory_pos); ``memory_mask`` counts differing entries."""
    r = [torch.as_tensor(t) for t in ref]
    g = [torch.as_tensor(t) for t in got]
    return {"memory": float((r[0].double() - g[0].double()).abs().max()),
            "memory_mask": float((r[1] != g[1]).sum()),
            "memory_pos": float((r[2].double() - g[2].double()).abs().max())}


# ------------------------------------------------------------------------------------------------ ONNX export
@dataclass
class ExportReport:
    """What an export wrote and how its check went.

    Attributes:
        path: the written file.
        task: "detection" or "captioning".
        format: "onnx" or "safetensors".
        inputs, outputs: graph input/output names (ONNX).
        trace_shape: (B, H, W) of the dummy batch the graph was traced with (ONNX).
        dynamic: batch, height and width are dynamic axes (ONNX).
        checks: per checked input shape "BxHxW", the largest differences against vitkit eager (fp32).
    """
    path: Path
    task: str
    format: str
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    trace_shape: tuple[int, int, int] | None = None
    dynamic: bool = False
    checks: dict[str, dict[str, float]] = field(default_factory=dict)


def _task(model: nn.Module) -> str:
    from vitkit.captioning.predictor import CaptionPipeline
    from vitkit.detection.predictor import Detector

    if isinstance(model, Detector):
        return "detection"
    if isinstance(model, CaptionPipeline):
        return "captioning"
    raise TypeError("expected a vitkit.detection.predictor.Detector or a CaptionPipeline (what vitkit.load returns), "
                    f"got "
                    f"{type(model).__name__}")


def _wrapper(model: nn.Module) -> tuple[nn.Module, list[str], list[str]]:
    if _task(model) == "detection":
        return DetectorExport(model.model, model.postprocess).eval(), DETECTOR_INPUTS, DETECTOR_OUTPUTS
    return CaptionEncoderExport(model.captioner).eval(), ENCODER_INPUTS, ENCODER_OUTPUTS


def _inputs(task: str, batch: int, height: int, width: int, stride: int, seed: int = 0) -> tuple[Tensor, ...]:
    images, mask = dummy_inputs(batch, height, width, stride, seed)
    if task == "captioning":
        return images, mask
    g = torch.Generator().manual_seed(seed + 1)
    sizes = torch.stack((torch.randint(height // 2, 2 * height, (batch,), generator=g),
                         torch.randint(width // 2, 2 * width, (batch,), generator=g)), dim=1)  # (B, 2) [h, w]
    return images, mask, sizes


def default_trace_size(model: nn.Module) -> tuple[int, int]:
    """(H, W) of the default trace: a square of the longest preprocessed side (``max_size``), which holds every
    image the model's preprocessing produces, rounded up to the patch size."""
    side = int(model.max_size or 2 * model.size)
    stride = _trace_stride(model.model.encoder if _task(model) == "detection" else model.captioner.encoder)
    side = -(-side // stride) * stride
    return side, side


def _metadata(model: nn.Module, task: str, dynamic: bool, trace_shape: tuple[int, int, int]) -> dict[str, str]:
    from vitkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from vitkit.version import __version__

    meta = {"vitkit_version": __version__, "vitkit_task": task, "dynamic": json.dumps(dynamic),
            "trace_shape": json.dumps(list(trace_shape)),
            "preprocess": json.dumps({"resize_short_side": model.size, "max_size": model.max_size,
                                      "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "pad": "zeros, bottom/right; "
                                      "mask True over padding"})}
    if task == "detection":
        meta["class_names"] = json.dumps(model.class_names)
        meta["label_to_cat_id"] = json.dumps(model.label_to_cat_id)
        meta["outputs"] = ("boxes (B, K, 4) xyxy pixels of orig_sizes; scores (B, K); labels (B, K) contiguous "
                           "labels (label_to_cat_id maps them to dataset category ids)")
    else:
        meta["tokenizer"] = model.tokenizer.to_str()
        meta["outputs"] = ("memory (B, N, D), memory_mask (B, N) True = padding, memory_pos (B, N, D); decode them "
                           "with vitkit.io.export.decode_memory (PyTorch)")
    return meta


def export_onnx(model: nn.Module, out: str | Path, *, dynamic: bool = False, opset: int = DEFAULT_OPSET,
                batch: int = 1, size: tuple[int, int] | None = None, check: bool = True) -> ExportReport:
    """Export a loaded model (what :func:`vitkit.load` returns) to ONNX.

    A :class:`~vitkit.detection.predictor.Detector` becomes images -> boxes/scores/labels (:class:`DetectorExport`); a
    :class:`~vitkit.captioning.predictor.CaptionPipeline` becomes its caption encoder (:class:`CaptionEncoderExport`).

    Args:
        model: the loaded model (moved to the CPU, fp32, for tracing).
        out: the .onnx file to write (parent folders are created).
        dynamic: batch, height and width as dynamic axes; otherwise the graph takes exactly ``batch`` x ``size``.
        opset: ONNX opset, >= 16 (GridSample).
        batch: images in the traced batch (the fixed batch of a static export).
        size: (H, W) of the traced batch (the fixed input size of a static export); default
            :func:`default_trace_size`.
        check: run the graph in onnxruntime on the dummy batch (and, for a dynamic export, on a batch of another
            batch size and image size) and record the largest differences against vitkit eager in the report.

    Returns:
        An :class:`ExportReport`.

    Raises:
        ImportError: onnx (or, with ``check``, onnxruntime) is not installed.
        ValueError: an opset below 16, a model that cannot be exported, or a trace size too small.
    """
    require("onnx", "ONNX export")
    if check:
        require("onnxruntime", "checking the exported graph (pass check=False / --no-check to skip)")
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old: vitkit's graphs need >= {MIN_OPSET} (GridSample for deformable "
                         "attention)")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    task = _task(model)
    model = model.to("cpu").float().eval()
    wrapper, input_names, output_names = _wrapper(model)
    encoder = model.model.encoder if task == "detection" else model.captioner.encoder
    stride = _trace_stride(encoder)
    height, width = size or default_trace_size(model)
    inputs = _inputs(task, batch, height, width, stride)
    with torch.no_grad():
        reference = wrapper(*inputs)
        if task == "detection" and getattr(wrapper.model, "two_stage", False):
            _check_two_stage_tokens(wrapper.model, inputs)
    axes = None
    if dynamic:
        axes = {"images": {0: "batch", 2: "height", 3: "width"}, "mask": {0: "batch", 1: "height", 2: "width"}}
        if task == "detection":
            axes.update({"orig_sizes": {0: "batch"}, "boxes": {0: "batch"}, "scores": {0: "batch"},
                         "labels": {0: "batch"}})
        else:
            axes.update({name: {0: "batch", 1: "tokens"} for name in output_names})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        # Expected: the legacy-exporter notice, and tracer notes on the mask branches this module arranges for.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        torch.onnx.export(wrapper, inputs, str(out), dynamo=False, opset_version=opset, input_names=input_names,
                          output_names=output_names, dynamic_axes=axes, do_constant_folding=True)
    _write_metadata(out, _metadata(model, task, dynamic, (batch, height, width)))
    report = ExportReport(out, task, "onnx", input_names, output_names, (batch, height, width), dynamic)
    if check:
        report.checks[f"{batch}x{height}x{width}"] = check_onnx(out, wrapper, inputs, reference)
        if dynamic:
            other = _inputs(task, batch + 1, height + 3, width + stride + 5, stride, seed=1)
            report.checks[f"{batch + 1}x{height + 3}x{width + stride + 5}"] = check_onnx(out, wrapper, other)
    return report


def _check_two_stage_tokens(model: nn.Module, inputs: tuple[Tensor, ...]) -> None:
    """Two-stage selection keeps ``num_queries`` tokens; a trace with fewer would freeze a repeat pattern."""
    n = model(*_pad_to_multiple(inputs[0], inputs[1], _patch_size(model.encoder)))["enc_outputs"]["pred_logits"]
    if n.shape[1] < model.num_queries:
        raise ValueError(f"trace size {tuple(inputs[0].shape[-2:])} gives {n.shape[1]} memory tokens, fewer than the "
                         f"{model.num_queries} queries two-stage selection keeps; trace with a larger size")


def _write_metadata(path: Path, meta: dict[str, str]) -> None:
    onnx = require("onnx", "ONNX export")
    proto = onnx.load(str(path))
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def onnx_session(path: str | Path, threads: int | None = None, spin: bool = True):
    """An onnxruntime CPU ``InferenceSession`` for an exported graph.

    Args:
        path: the .onnx file.
        threads: intra-op threads (default: onnxruntime's, one per core).
        spin: let idle pool threads busy-wait for the next op (onnxruntime's default; lower latency on a machine
            of one's own, but the spinning threads take CPU from other work on a shared one).
    """
    ort = require("onnxruntime", "running an exported graph")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def run_onnx(session, inputs: tuple[Tensor, ...]) -> list:
    """Run a session on tensors given in its input order; returns numpy arrays in output order."""
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {n: t.numpy() for n, t in zip(names, inputs, strict=True)})


def check_onnx(path: str | Path, wrapper: nn.Module, inputs: tuple[Tensor, ...],
               reference: tuple[Tensor, ...] | None = None) -> dict[str, float]:
    """Largest differences between onnxruntime and the eager ``wrapper`` on ``inputs`` (see
    :func:`compare_detections`, :func:`compare_encoder`)."""
    got = run_onnx(onnx_session(path), inputs)
    if reference is None:
        with torch.no_grad():
            reference = wrapper(*inputs)
    if isinstance(wrapper, DetectorExport):
        return compare_detections(reference, got, inputs[2])
    return compare_encoder(reference, got)


# ------------------------------------------------------------------------------------------------ decoding
def decode_memory(pipe: nn.Module, memory: Any, memory_mask: Any, memory_pos: Any, **options: Any) -> list[dict]:
    """Caption from an exported encoder's outputs, decoding in PyTorch with the pipeline's captioner.

    Args:
        pipe: the :class:`~vitkit.captioning.predictor.CaptionPipeline` (from :func:`vitkit.load` or
            :func:`load_safetensors`).
        memory, memory_mask, memory_pos: the graph's outputs (numpy arrays or tensors), (B, N, D), (B, N), (B, N, D).
        **options: generation options over the pipeline's defaults (method, num_beams, max_length, ...).

    Returns:
        B dicts ``{"caption": str, "score": float}``, as :meth:`CaptionPipeline.generate`.
    """
    from vitkit.captioning.decoding import beam_search, greedy_decode, sample_decode

    opts = pipe.generation_options(**options)
    cap = pipe.captioner.eval()
    device = pipe.device
    memory, memory_mask, memory_pos = (torch.as_tensor(t).to(device) for t in (memory, memory_mask, memory_pos))
    method = opts.pop("method")
    opts["max_length"] = opts["max_length"] or cap.max_length
    keep = {"greedy": ("max_length", "min_length", "no_repeat_ngram_size"),
            "beam": ("max_length", "min_length", "no_repeat_ngram_size", "num_beams", "length_penalty"),
            "sample": ("max_length", "min_length", "no_repeat_ngram_size", "temperature", "top_k", "top_p",
                       "generator")}[method]
    fn = {"greedy": greedy_decode, "beam": beam_search, "sample": sample_decode}[method]
    with torch.no_grad():
        ids, scores = fn(cap, memory.to(next(cap.parameters()).dtype), memory_mask.bool(), memory_pos,
                         **{k: v for k, v in opts.items() if k in keep})
    captions = pipe.tokenizer.decode_batch(ids.cpu())
    return [{"caption": c, "score": float(s)} for c, s in zip(captions, scores.float().cpu().tolist(), strict=True)]


# ------------------------------------------------------------------------------------------------ safetensors
def read_checkpoint_config(path: str | Path) -> tuple[str, dict]:
    """(task, model config) of a training checkpoint, read with ``torch.load(weights_only=True)``
    (:func:`vitkit.utils.checkpoints.safe_load_checkpoint`); the config is checked and made offline by
    :func:`vitkit.utils.checkpoints.check_stored_config`.

    Raises:
        FileNotFoundError, ValueError: as :func:`vitkit.load` (:class:`~vitkit.utils.checkpoints.CheckpointError` for a
            refused or unreadable file, or a config naming a class outside vitkit, torch.nn and timm).
    """
    from vitkit.utils.checkpoints import check_stored_config, safe_load_checkpoint

    path = Path(path)
    ckpt = safe_load_checkpoint(path)  # FileNotFoundError, or a CheckpointError (refused / unreadable)
    for task, key in (("captioning", "vitkit_captioner_config"), ("detection", "vitkit_detector_config")):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            return task, check_stored_config(ckpt[key], f"{path}: '{key}'")
    raise ValueError(f"{path}: neither 'vitkit_detector_config' nor 'vitkit_captioner_config' in the checkpoint; "
                     "expected a Lightning .ckpt written by tools/train.py")


def export_safetensors(model: nn.Module, config: dict, out: str | Path) -> ExportReport:
    """Write a loaded model's weights and settings as a weights-only safetensors file.

    Args:
        model: a :class:`~vitkit.detection.predictor.Detector` or :class:`~vitkit.captioning.predictor.CaptionPipeline`.
        config: the network's ``{"class_path", "init_args"}`` config (see :func:`read_checkpoint_config`).
        out: the .safetensors file to write.

    Returns:
        An :class:`ExportReport` (no checks; :func:`load_safetensors` reads the file back).
    """
    from safetensors.torch import save_model

    from vitkit.version import __version__

    task = _task(model)
    meta = {"format": "pt", "vitkit_version": __version__, "vitkit_task": task, "vitkit_config": json.dumps(config)}
    if task == "detection":
        net = model.model
        meta["vitkit_inference"] = json.dumps({
            "use_focal": model.postprocess.use_focal, "num_select": model.postprocess.num_select,
            "class_names": model.class_names, "label_to_cat_id": model.label_to_cat_id, "size": model.size,
            "max_size": model.max_size})
    else:
        net = model.captioner
        meta["vitkit_inference"] = json.dumps({"size": model.size, "max_size": model.max_size,
                                               "generation": model.generation})
        meta["vitkit_tokenizer"] = model.tokenizer.to_str()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_model(net.to("cpu"), str(out), metadata=meta)  # tied weights (the captioner's lm_head) stored once
    return ExportReport(out, task, "safetensors")


def load_safetensors(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the ready model of a file written by :func:`export_safetensors`.

    Returns what :func:`vitkit.load` returns for the training checkpoint it came from: a
    :class:`~vitkit.detection.predictor.Detector` or a
    :class:`~vitkit.captioning.predictor.CaptionPipeline`, in eval mode.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a safetensors file, or one without vitkit's metadata, or weights that do not fit the config;
            a :class:`~vitkit.utils.checkpoints.CheckpointError` when its config
            names a class outside vitkit, torch.nn and
            timm.
    """
    from safetensors import safe_open
    from safetensors.torch import load_model

    from vitkit.io.load import instantiate

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"safetensors file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:
        raise ValueError(f"{path}: not a readable safetensors file ({type(err).__name__}: {err})") from err
    task = meta.get("vitkit_task")
    if task not in ("detection", "captioning") or "vitkit_config" not in meta:
        raise ValueError(f"{path}: no vitkit metadata (vitkit_task, vitkit_config); expected a file written by "
                         "tools/export.py --format safetensors (official DETR / Hugging Face weights load through "
                         "vitkit.detection.official_weights)")
    from vitkit.utils.checkpoints import check_stored_config

    config, settings = json.loads(meta["vitkit_config"]), json.loads(meta.get("vitkit_inference", "{}"))
    config = check_stored_config(config, f"{path}: metadata 'vitkit_config'")  # only vitkit/torch.nn/timm classes
    if task == "detection":
        from vitkit.detection import PostProcess
        from vitkit.detection.model import DETR
        from vitkit.detection.predictor import Detector

        net = instantiate(config, DETR)
    else:
        from vitkit.captioning.model import Captioner
        from vitkit.captioning.predictor import CaptionPipeline
        from vitkit.captioning.tokenizer import CaptionTokenizer

        net = instantiate(config, Captioner)
    try:
        load_model(net, str(path), strict=True, device=str(map_location))
    except RuntimeError as err:
        raise ValueError(f"{path}: the weights do not fit the model built from its config: {err}") from err
    if task == "detection":
        post = PostProcess(use_focal=settings.get("use_focal", False), num_select=settings.get("num_select", 100))
        result = Detector(net, post, class_names=settings.get("class_names"),
                          label_to_cat_id=settings.get("label_to_cat_id"), size=settings.get("size", 800),
                          max_size=settings.get("max_size", 1333))
    else:
        tokenizer = CaptionTokenizer.from_str(meta["vitkit_tokenizer"])
        result = CaptionPipeline(net, tokenizer, size=settings.get("size", 224), max_size=settings.get("max_size"),
                                 generation=settings.get("generation"))
    return result.to(map_location).eval()


# ------------------------------------------------------------------------------------------------ entry point
def export_checkpoint(ckpt: str | Path, format: str = "onnx", out: str | Path | None = None, **onnx_options: Any
                      ) -> ExportReport:
    """Export a training checkpoint (what ``tools/export.py`` does).

    Args:
        ckpt: a checkpoint loadable by :func:`vitkit.load`.
        format: "onnx" (detector with post-processing, or caption encoder) or "safetensors" (weights + config).
        out: output file; default next to the checkpoint: ``<stem>.onnx`` (a captioner: ``<stem>.encoder.onnx``)
            or ``<stem>.safetensors``.
        **onnx_options: :func:`export_onnx` keyword arguments (dynamic, opset, batch, size, check).

    Raises:
        FileNotFoundError: no checkpoint.
        ValueError: an unsafe or unknown checkpoint, an unknown format, or a model that cannot be exported.
        ImportError: onnx / onnxruntime missing (the message says how to install them).
    """
    from vitkit.io.load import load

    if format not in ("onnx", "safetensors"):
        raise ValueError(f"format must be onnx|safetensors, got {format!r}")
    ckpt = Path(ckpt)
    if format == "onnx":  # fail on a missing dependency before loading anything
        require("onnx", "ONNX export")
        if onnx_options.get("check", True):
            require("onnxruntime", "checking the exported graph (--no-check skips it)")
    model = load(ckpt)
    task = _task(model)
    if format == "safetensors":
        if onnx_options:
            raise ValueError(f"ONNX options {sorted(onnx_options)} do not apply to a safetensors export")
        _, config = read_checkpoint_config(ckpt)
        return export_safetensors(model, config, out or ckpt.with_suffix(".safetensors"))
    default = ckpt.with_suffix(".encoder.onnx" if task == "captioning" else ".onnx")
    return export_onnx(model, out or default, **onnx_options)
