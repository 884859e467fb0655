"""ONNX export of a loaded predictor, for every task: trace, metadata, onnxruntime sessions and the parity check.

Graphs are fp32 and CPU-traced (TorchScript tracer) from a copy of the predictor; each task's graph parts are its
descriptor's :class:`vitkit.training.task.OnnxGraph`. Needs ``pip install 'vitkit[export]'``."""

from __future__ import annotations

import copy
import importlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vitkit.core.trace import trace_stride
from vitkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from vitkit.io.load import task_of
from vitkit.tasks import tasks
from vitkit.training.task import OnnxGraph, Task
from vitkit.version import __version__

MIN_OPSET = 16  # GridSample (deformable attention) is in ONNX from opset 16
DEFAULT_OPSET = 17  # adds LayerNormalization as one op
INSTALL_HINT = "pip install 'vitkit[export]'  (or: pip install onnx onnxruntime)"


def require(module: str, purpose: str) -> Any:
    """Import an optional export dependency, or raise ImportError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{purpose} needs the '{module}' package, which is not installed: {INSTALL_HINT}") from err


@dataclass
class ExportReport:
    """What an export wrote and how its check went.

    Attributes:
        task: the checkpoint's task (also for an export of a part of it, such as describe's detector).
        format: "onnx" or "safetensors".
        inputs, outputs: graph input/output names (ONNX).
        trace_shape: (B, H, W) of the dummy batch the graph was traced with (ONNX).
        dynamic: batch, height and width are dynamic axes (ONNX).
        checks: per checked input shape "BxHxW", the largest differences against vitkit eager (fp32).
        notes: what the export leaves out of the model."""
    path: Path
    task: str
    format: str
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    trace_shape: tuple[int, int, int] | None = None
    dynamic: bool = False
    checks: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def default_trace_size(model: nn.Module) -> tuple[int, int]:
    """(H, W) of the default trace: a square of the longest preprocessed side (``max_size``), which holds every
    image the model's preprocessing produces, rounded up to the patch size."""
    side = int(model.max_size or 2 * model.size)
    stride = trace_stride(task_of(model).network(model).encoder)
    side = -(-side // stride) * stride
    return side, side


def onnx_of(task: Task) -> OnnxGraph:
    """A task's ONNX graph parts.

    Raises:
        ValueError: a task with no ONNX export.
    """
    if task.onnx is None:
        raise ValueError(f"{task.name} models have no ONNX export; export them with --format safetensors")
    return task.onnx


def task_of_graph(graph: nn.Module) -> Task:
    """The registered task of a traceable graph (a task's ``OnnxGraph.graph_class``).

    Raises:
        TypeError: another module (the message names the graph classes)."""
    registered = [task for task in tasks() if task.onnx is not None]
    for task in registered:
        if isinstance(graph, task.onnx.graph_class):
            return task
    kinds = ", ".join(dict.fromkeys(task.onnx.graph_class.__name__ for task in registered))
    raise TypeError(f"expected a task's export graph ({kinds}), got {type(graph).__name__}")


def _metadata(model: nn.Module, task: Task, dynamic: bool, trace_shape: tuple[int, int, int]) -> dict[str, str]:
    meta = {"vitkit_version": __version__, "vitkit_task": task.name, "dynamic": json.dumps(dynamic),
            "trace_shape": json.dumps(list(trace_shape)),
            "preprocess": json.dumps({"resize_short_side": model.size, "max_size": model.max_size,
                                      "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "pad": "zeros, bottom/right; "
                                      "mask True over padding"})}
    return {**meta, **onnx_of(task).metadata(model)}


def _check_options(opset: int, batch: int, check: bool) -> None:
    require("onnx", "ONNX export")
    if check:
        require("onnxruntime", "checking the exported graph (pass check=False / --no-check to skip)")
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old: vitkit's graphs need >= {MIN_OPSET} (GridSample for deformable "
                         "attention)")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")


def export_onnx(model: nn.Module, out: str | Path, *, dynamic: bool = False, opset: int = DEFAULT_OPSET,
                batch: int = 1, size: tuple[int, int] | None = None, check: bool = True) -> ExportReport:
    """Export a loaded predictor (what :func:`vitkit.load` returns) to ONNX.

    A ``Detector`` becomes images -> boxes/scores/labels, a ``CaptionPipeline`` its caption encoder, a ``Describer``
    its detector's graph (the region caption head is not exported; ``notes`` say so).

    Args:
        model: the loaded predictor; not changed (a CPU fp32 copy is traced).
        out: the .onnx file to write (parent folders are created).
        dynamic: batch, height and width as dynamic axes; otherwise the graph takes exactly ``batch`` x ``size``.
        opset: ONNX opset, >= 16.
        size: (H, W) of the traced batch; default :func:`default_trace_size`.
        check: run the graph in onnxruntime on the dummy batch (and, if dynamic, on another batch and image size)
            and record the largest differences against vitkit eager in the report.

    Returns:
        An :class:`ExportReport`.

    Raises:
        ImportError: onnx (or, with ``check``, onnxruntime) is not installed.
        ValueError: an opset below 16, a model that cannot be exported (its task has no ONNX export), or a trace
            size too small."""
    _check_options(opset, batch, check)
    task = origin = task_of(model)
    if onnx_of(task).part is not None:  # a task whose graph is one part of it: the part's task exports it
        model = onnx_of(task).part(model)
        task = task_of(model)
    graph = onnx_of(task)
    model = copy.deepcopy(model).to("cpu").float().eval()
    wrapper = graph.graph(model)
    stride = trace_stride(task.network(model).encoder)
    height, width = size or default_trace_size(model)
    inputs = graph.trace_inputs(batch, height, width, stride)
    with torch.no_grad():
        reference = wrapper(*inputs)
    if graph.check_trace is not None:
        graph.check_trace(wrapper, inputs)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        # Expected: the legacy-exporter notice, and tracer notes on the mask branches core/trace.py arranges for.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        torch.onnx.export(wrapper, inputs, str(out), dynamo=False, opset_version=opset, input_names=graph.inputs,
                          output_names=graph.outputs, dynamic_axes=graph.dynamic_axes if dynamic else None,
                          do_constant_folding=True)
    meta = _metadata(model, task, dynamic, (batch, height, width))
    note = onnx_of(origin).note
    if origin is not task:
        meta.update(vitkit_checkpoint_task=origin.name, vitkit_not_exported=note)
    _write_metadata(out, meta)
    report = ExportReport(out, origin.name, "onnx", list(graph.inputs), list(graph.outputs), (batch, height, width),
                          dynamic, notes=[note] if note else [])
    if check:
        report.checks[f"{batch}x{height}x{width}"] = check_onnx(out, wrapper, inputs, reference)
        if dynamic:
            shape = (batch + 1, height + 3, width + stride + 5)
            other = graph.trace_inputs(*shape, stride, seed=1)
            report.checks["x".join(map(str, shape))] = check_onnx(out, wrapper, other)
    return report


def _write_metadata(path: Path, meta: dict[str, str]) -> None:
    onnx = require("onnx", "ONNX export")
    proto = onnx.load(str(path))
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def onnx_session(path: str | Path, threads: int | None = None, spin: bool = True) -> Any:
    """An onnxruntime CPU ``InferenceSession`` for an exported .onnx file.

    Args:
        threads: intra-op threads (default: onnxruntime's, one per core).
        spin: let idle pool threads busy-wait for the next op (onnxruntime's default)."""
    ort = require("onnxruntime", "running an exported graph")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, inputs: tuple[Tensor, ...]) -> list:
    """Run a session on tensors given in its input order; returns numpy arrays in output order."""
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {n: t.numpy() for n, t in zip(names, inputs, strict=True)})


def check_onnx(path: str | Path, wrapper: nn.Module, inputs: tuple[Tensor, ...],
               reference: tuple[Tensor, ...] | None = None) -> dict[str, float]:
    """Largest differences between onnxruntime and the eager ``wrapper`` (a task's graph) on ``inputs`` (see
    :func:`~vitkit.detection.onnx.compare_detections`, :func:`~vitkit.captioning.onnx.compare_encoder`)."""
    task = task_of_graph(wrapper)
    got = run_onnx(onnx_session(path), inputs)
    if reference is None:
        with torch.no_grad():
            reference = wrapper(*inputs)
    return onnx_of(task).compare(reference, got, inputs)
