"""The describe task's descriptor (:data:`TASK`), registered in :mod:`vitkit.tasks`; ONNX export is the
detector alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import nn

from vitkit.captioning.task import link_tokenizer, spec_tokenizer, tokenizer_config
from vitkit.describe import spec
from vitkit.describe.datamodule import DescribeDataModule
from vitkit.describe.model import DescribeModel
from vitkit.describe.module import DescribeModule
from vitkit.describe.predictor import Describer
from vitkit.detection.task import TASK as DETECTION
from vitkit.training.task import Task
from vitkit.utils.spec import InferenceSpec

if TYPE_CHECKING:
    from lightning.pytorch.cli import LightningArgumentParser

ONNX_NOTE = ("the region caption head is not exported to ONNX: the graph is the detector alone (boxes, scores, "
             "labels); caption regions in PyTorch (vitkit.load(CKPT).describe), or export the whole model with "
             "--format safetensors")


def add_links(parser: LightningArgumentParser) -> None:
    """The detection links and the tokenizer's values into ``model.text``."""
    DETECTION.add_links(parser)
    link_tokenizer(parser, "text")


def record_configs(configs: Mapping[str, dict[str, Any]], model: Any, datamodule: Any) -> None:
    """The detector's config with the class count (as detection records it) and the text decoder's with the
    tokenizer's values, into ``model.detector_config`` and ``model.text_config``."""
    DETECTION.record_configs(configs, model, datamodule)
    model.text_config = tokenizer_config(configs["text"], datamodule)


def predictor(spec_: InferenceSpec, net: nn.Module) -> Describer:
    """A Describer with the spec's tokenizer, class names and ids, sizes and generation defaults."""
    return Describer(net, spec_tokenizer(spec_), class_names=spec_.class_names, label_to_cat_id=spec_.label_to_cat_id,
                     num_select=spec_.num_select, size=spec_.size, max_size=spec_.max_size,
                     generation=spec_.generation)


TASK = Task(
    name=spec.NAME, networks=spec.FIELDS.networks, module_class=DescribeModule, datamodule_class=DescribeDataModule,
    monitor=DETECTION.monitor, ckpt_filename=DETECTION.ckpt_filename, add_links=add_links,
    record_configs=record_configs, spec=spec.FIELDS, network_class=DescribeModel, predictor_class=Describer,
    predictor=predictor, network=lambda describer: describer.model, predictor_spec=spec.predictor_spec,
    # DescribeModule's detector and region head keep their names in DescribeModel: no prefix to strip; its other
    # modules (criterion, post-processing) are not part of this network.
    state_prefix="", state_keys=("detector", "head"), build=spec.build_network,
    onnx=dataclasses.replace(DETECTION.onnx, suffix=".detector.onnx", part=lambda describer: describer.detector,
                             note=ONNX_NOTE))
"""Describe, as :mod:`vitkit.io`, :mod:`vitkit.cli` and the inference spec see it."""
