"""Deployment exports of a checkpoint: ONNX graphs (:func:`export_onnx`), weights-only safetensors with the inference
spec in the metadata (:func:`export_safetensors`, read back by :func:`load_safetensors`), and
:func:`export_checkpoint`. Exports work on copies: the caller's predictor is not changed."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from safetensors.torch import save_model
from torch import nn

from vitkit.captioning.onnx import CaptionEncoderExport, compare_encoder, decode_memory
from vitkit.core.trace import dummy_inputs
from vitkit.detection.onnx import DetectorExport, compare_detections
from vitkit.io.load import build_predictor, load_safetensors, read_source, task_of
from vitkit.io.onnx_export import (
    DEFAULT_OPSET,
    MIN_OPSET,
    ExportReport,
    check_onnx,
    default_trace_size,
    export_onnx,
    onnx_of,
    onnx_session,
    require,
    run_onnx,
)
from vitkit.utils.checkpoints import check_stored_config
from vitkit.utils.spec import SPEC_KEY, spec_metadata
from vitkit.version import __version__

__all__ = ["DEFAULT_OPSET", "MIN_OPSET", "CaptionEncoderExport", "DetectorExport", "ExportReport", "check_onnx",
           "compare_detections", "compare_encoder", "decode_memory", "default_trace_size", "dummy_inputs",
           "export_checkpoint", "export_onnx", "export_safetensors", "load_safetensors", "onnx_session",
           "read_checkpoint_config", "require", "run_onnx"]


def read_checkpoint_config(path: str | Path) -> tuple[str, dict]:
    """(task, model config) of a checkpoint, read weights-only; the config is checked by
    :func:`vitkit.utils.checkpoints.check_stored_config`.

    Raises:
        FileNotFoundError, ValueError: as :func:`vitkit.load`."""
    spec, _, source = read_source(Path(path))
    return spec.task, check_stored_config(spec.model_config, f"{source}: '{SPEC_KEY}' model_config")


def export_safetensors(model: nn.Module, config: dict[str, Any], out: str | Path) -> ExportReport:
    """Write a loaded predictor's weights (tied ones once) and inference spec as a weights-only safetensors file.

    Args:
        model: a loaded predictor (not changed: a CPU copy of its network is saved).
        config: the network's ``{"class_path", "init_args"}`` config (see :func:`read_checkpoint_config`).

    Returns:
        An :class:`ExportReport` (no checks)."""
    task = task_of(model)
    spec = task.predictor_spec(model, config)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    net = copy.deepcopy(task.network(model)).to("cpu")
    save_model(net, str(out), metadata={"format": "pt", "vitkit_version": __version__, **spec_metadata(spec)})
    return ExportReport(out, task.name, "safetensors")  # tied weights (the captioner's lm_head) are stored once


def export_checkpoint(ckpt: str | Path, format: str = "onnx", out: str | Path | None = None, **onnx_options: Any
                      ) -> ExportReport:
    """Export a checkpoint (what ``tools/export.py`` does).

    Args:
        format: "onnx" (detector with post-processing, caption encoder, or a describe model's detector) or
            "safetensors" (weights + spec).
        out: output file; default next to the checkpoint: ``<stem>.onnx`` (a captioner: ``<stem>.encoder.onnx``, a
            describe model: ``<stem>.detector.onnx``) or ``<stem>.safetensors``.
        **onnx_options: :func:`export_onnx` keyword arguments (dynamic, opset, batch, size, check).

    Raises:
        FileNotFoundError: no checkpoint.
        ValueError: an unsafe or unknown checkpoint, an unknown format, or a model that cannot be exported.
        ImportError: onnx / onnxruntime missing (the message says how to install them)."""
    if format not in ("onnx", "safetensors"):
        raise ValueError(f"format must be onnx|safetensors, got {format!r}")
    if format == "safetensors" and onnx_options:
        raise ValueError(f"ONNX options {sorted(onnx_options)} do not apply to a safetensors export")
    ckpt = Path(ckpt)
    if format == "onnx":  # fail on a missing dependency before loading anything
        require("onnx", "ONNX export")
        if onnx_options.get("check", True):
            require("onnxruntime", "checking the exported graph (--no-check skips it)")
    spec, state, source = read_source(ckpt)
    model = build_predictor(spec, state, source)
    if format == "safetensors":
        config = check_stored_config(spec.model_config, f"{source}: '{SPEC_KEY}' model_config")
        return export_safetensors(model, config, out or ckpt.with_suffix(".safetensors"))
    return export_onnx(model, out or ckpt.with_suffix(onnx_of(task_of(model)).suffix), **onnx_options)
