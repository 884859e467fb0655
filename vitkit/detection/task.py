"""The detection task's descriptor (:data:`TASK`), registered in :mod:`vitkit.tasks`: DetectionModule on
CocoDataModule (best by ``val/AP``), a DETR in a Detector for loading (weights under ``detector.``), official DETR
weights via :data:`~vitkit.detection.official_weights.IMPORTER`, ONNX images -> boxes, scores, labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import nn

import vitkit.detection.onnx as detection_onnx
from vitkit.detection import spec
from vitkit.detection.datamodule import CocoDataModule
from vitkit.detection.model import DETR
from vitkit.detection.module import DetectionModule
from vitkit.detection.official_weights import IMPORTER
from vitkit.detection.postprocess import PostProcess
from vitkit.detection.predictor import Detector
from vitkit.training.task import OnnxGraph, Task
from vitkit.utils.spec import InferenceSpec

if TYPE_CHECKING:
    from lightning.pytorch.cli import LightningArgumentParser


def add_links(parser: LightningArgumentParser) -> None:
    """The data's class count, class names and category ids into the model and its detector."""
    parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
    parser.link_arguments("data.num_classes", "model.detector.init_args.num_classes", apply_on="instantiate")
    parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
    parser.link_arguments("data.label_to_cat_id", "model.label_to_cat_id", apply_on="instantiate")


def record_configs(configs: Mapping[str, dict[str, Any]], model: Any, datamodule: Any) -> None:
    """The detector's resolved config, with the data's class count, into ``model.detector_config``."""
    detector = configs["detector"]
    detector["init_args"]["num_classes"] = datamodule.num_classes
    model.detector_config = detector


def predictor(spec_: InferenceSpec, net: nn.Module) -> Detector:
    """A Detector; the post-processing follows the head: sigmoid (top K over queries x classes) or softmax."""
    post = PostProcess(sigmoid=bool(net.sigmoid_head), num_select=spec_.num_select)
    return Detector(net, post, class_names=spec_.class_names, label_to_cat_id=spec_.label_to_cat_id, size=spec_.size,
                    max_size=spec_.max_size)


ONNX = OnnxGraph(graph=detection_onnx.graph, graph_class=detection_onnx.DetectorExport, inputs=detection_onnx.INPUTS,
                 outputs=detection_onnx.OUTPUTS, dynamic_axes=detection_onnx.DYNAMIC_AXES,
                 trace_inputs=detection_onnx.trace_inputs, compare=detection_onnx.compare,
                 metadata=detection_onnx.onnx_metadata, check_trace=detection_onnx.check_trace)
"""The detector's graph: images -> boxes, scores, labels, post-processing included."""

TASK = Task(
    name=spec.NAME, networks=("detector",), module_class=DetectionModule, datamodule_class=CocoDataModule,
    monitor="val/AP", ckpt_filename="epoch{epoch:03d}-ap{val/AP:.3f}", add_links=add_links,
    record_configs=record_configs, spec=spec.FIELDS, network_class=DETR, predictor_class=Detector,
    predictor=predictor, network=lambda detector: detector.model, predictor_spec=spec.predictor_spec,
    state_prefix="detector.", onnx=ONNX, importers=(IMPORTER,))
"""Detection, as :mod:`vitkit.io`, :mod:`vitkit.cli` and the inference spec see it."""
