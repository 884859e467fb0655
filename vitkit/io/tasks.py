"""The per-task table of :mod:`vitkit.io`: what loading and exporting need to know about each task, in one place.

Loading and exporting look the task up here once (:data:`TASKS` by a spec's ``task``, :func:`task_of` for a loaded
predictor) and then run the same code for every task.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

import vitkit.captioning.export as caption_export
import vitkit.describe.spec as describe_spec
import vitkit.detection.export as detection_export
from vitkit.captioning.model import Captioner
from vitkit.captioning.predictor import CaptionPipeline
from vitkit.captioning.tokenizer import CaptionTokenizer
from vitkit.describe.model import DescribeModel
from vitkit.describe.predictor import Describer
from vitkit.detection.model import DETR
from vitkit.detection.postprocess import PostProcess
from vitkit.detection.predictor import Detector
from vitkit.utils.spec import InferenceSpec


@dataclass(frozen=True)
class TaskIO:
    """How :mod:`vitkit.io` handles one task.

    Attributes:
        name: the spec's ``task``.
        network_class: the class its ``model_config`` must build.
        predictor_class: what :func:`vitkit.load` returns for it.
        state_prefix: the Lightning module attribute holding the network (its weights' key prefix in a ``.ckpt``).
        predictor: (spec, network with its weights) -> the predictor (raises ValueError for settings that do not fit
            the network).
        network: predictor -> its network (the weights that are saved).
        predictor_spec: (predictor, model config) -> the spec recording the predictor's settings.
        graph: predictor -> the module ONNX traces.
        graph_class: that module's class.
        inputs, outputs: the graph's input and output names.
        dynamic_axes: the dynamic axes of a dynamic export.
        trace_inputs: (batch, height, width, stride, seed) -> the graph's dummy inputs.
        check_trace: (graph, dummy inputs) -> None, raising ValueError for a trace that would be wrong.
        compare: (eager outputs, onnxruntime outputs, inputs) -> the largest differences.
        onnx_metadata: predictor -> the task's entries of the graph's metadata.
        onnx_suffix: the default suffix of the graph file.
        build: (checked model config) -> the network; None: ``instantiate(config, network_class)``.
        onnx_part: predictor -> the predictor of another task that ONNX export writes instead (describe: the
            detector alone), or None; the graph fields above are then that task's.
        onnx_note: what the ONNX export leaves out, said with the export (or "").
        state_keys: the network's top-level module names whose weights are read from a ``.ckpt`` (after the prefix);
            empty: every weight under ``state_prefix``.
    """
    name: str
    network_class: type[nn.Module]
    predictor_class: type[nn.Module]
    state_prefix: str
    predictor: Callable[[InferenceSpec, nn.Module], nn.Module]
    network: Callable[[nn.Module], nn.Module]
    predictor_spec: Callable[[nn.Module, dict[str, Any]], InferenceSpec]
    graph: Callable[[nn.Module], nn.Module]
    graph_class: type[nn.Module]
    inputs: list[str]
    outputs: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    trace_inputs: Callable[..., tuple]
    check_trace: Callable[[nn.Module, tuple], None]
    compare: Callable[[tuple, Any, tuple], dict[str, float]]
    onnx_metadata: Callable[[nn.Module], dict[str, str]]
    onnx_suffix: str
    build: Callable[[dict[str, Any]], nn.Module] | None = None
    onnx_part: Callable[[nn.Module], nn.Module] | None = None
    onnx_note: str = ""
    state_keys: tuple[str, ...] = ()


def _detector(spec: InferenceSpec, net: nn.Module) -> Detector:
    """A Detector; the post-processing follows the head: sigmoid (top K over queries x classes) or softmax."""
    post = PostProcess(sigmoid=bool(net.sigmoid_head), num_select=spec.num_select)
    return Detector(net, post, class_names=spec.class_names, label_to_cat_id=spec.label_to_cat_id, size=spec.size,
                    max_size=spec.max_size)


def _tokenizer(spec: InferenceSpec) -> CaptionTokenizer:
    try:
        return CaptionTokenizer.from_str(spec.tokenizer)
    except Exception as err:
        raise ValueError(f"the stored tokenizer cannot be read ({type(err).__name__}: {err})") from err


def _caption_pipeline(spec: InferenceSpec, net: nn.Module) -> CaptionPipeline:
    """A CaptionPipeline with the spec's tokenizer and generation defaults."""
    tokenizer = _tokenizer(spec)
    return CaptionPipeline(net, tokenizer, size=spec.size, max_size=spec.max_size, generation=spec.generation)


def _describer(spec: InferenceSpec, net: nn.Module) -> Describer:
    """A Describer with the spec's tokenizer, class names and ids, sizes and generation defaults."""
    return Describer(net, _tokenizer(spec), class_names=spec.class_names, label_to_cat_id=spec.label_to_cat_id,
                     num_select=spec.num_select, size=spec.size, max_size=spec.max_size, generation=spec.generation)


def _no_check(graph: nn.Module, inputs: tuple) -> None:
    """Every trace size that :func:`~vitkit.core.trace.dummy_inputs` accepts is right."""


_DETECTION_GRAPH: dict[str, Any] = dict(
    graph=detection_export.graph, graph_class=detection_export.DetectorExport, inputs=detection_export.INPUTS,
    outputs=detection_export.OUTPUTS, dynamic_axes=detection_export.DYNAMIC_AXES,
    trace_inputs=detection_export.trace_inputs, check_trace=detection_export.check_trace,
    compare=detection_export.compare, onnx_metadata=detection_export.onnx_metadata)
DESCRIBE_ONNX_NOTE = ("the region caption head is not exported to ONNX: the graph is the detector alone (boxes, "
                      "scores, labels); caption regions in PyTorch (vitkit.load(CKPT).describe), or export the whole "
                      "model with --format safetensors")

TASKS: dict[str, TaskIO] = {
    "detection": TaskIO(
        name="detection", network_class=DETR, predictor_class=Detector, state_prefix="detector.",
        predictor=_detector, network=lambda det: det.model, predictor_spec=detection_export.predictor_spec,
        onnx_suffix=".onnx", **_DETECTION_GRAPH),
    "captioning": TaskIO(
        name="captioning", network_class=Captioner, predictor_class=CaptionPipeline, state_prefix="captioner.",
        predictor=_caption_pipeline, network=lambda pipe: pipe.captioner, predictor_spec=caption_export.predictor_spec,
        graph=caption_export.graph, graph_class=caption_export.CaptionEncoderExport,
        inputs=caption_export.INPUTS, outputs=caption_export.OUTPUTS, dynamic_axes=caption_export.DYNAMIC_AXES,
        trace_inputs=caption_export.trace_inputs, check_trace=_no_check, compare=caption_export.compare,
        onnx_metadata=caption_export.onnx_metadata, onnx_suffix=".encoder.onnx"),
    # DescribeModule's detector and region head keep their names in DescribeModel: no prefix to strip; other
    # modules of the Lightning module (its criterion, post-processing) are not part of this network.
    "describe": TaskIO(
        name="describe", network_class=DescribeModel, predictor_class=Describer, state_prefix="",
        predictor=_describer, network=lambda describer: describer.model,
        predictor_spec=describe_spec.predictor_spec, onnx_suffix=".detector.onnx",
        build=describe_spec.build_network,
        onnx_part=lambda describer: describer.detector, onnx_note=DESCRIBE_ONNX_NOTE,
        state_keys=("detector", "head"),
        **_DETECTION_GRAPH),
}


def task_of(model: nn.Module) -> TaskIO:
    """The task of a loaded predictor (what :func:`vitkit.load` returns).

    Raises:
        TypeError: not a Detector, a CaptionPipeline or a Describer.
    """
    for task in TASKS.values():
        if isinstance(model, task.predictor_class):
            return task
    raise TypeError("expected a vitkit.detection.predictor.Detector, a vitkit.captioning.predictor.CaptionPipeline or "
                    f"a vitkit.describe.predictor.Describer (what vitkit.load returns), got {type(model).__name__}")


def task_of_graph(graph: nn.Module) -> TaskIO:
    """The task of a traceable graph (a :class:`~vitkit.detection.export.DetectorExport` or a
    :class:`~vitkit.captioning.export.CaptionEncoderExport`).

    Raises:
        TypeError: another module.
    """
    for task in TASKS.values():
        if isinstance(graph, task.graph_class):
            return task
    raise TypeError("expected a task's export graph (DetectorExport, CaptionEncoderExport), got "
                    f"{type(graph).__name__}")
