"""The captioning task's descriptor (:data:`TASK`), registered in :mod:`vitkit.tasks`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import nn

import vitkit.captioning.onnx as caption_onnx
from vitkit.captioning import spec
from vitkit.captioning.datamodule import CaptionDataModule
from vitkit.captioning.model import Captioner
from vitkit.captioning.module import CaptionModule
from vitkit.captioning.predictor import CaptionPipeline
from vitkit.captioning.tokenizer import CaptionTokenizer
from vitkit.training.task import OnnxGraph, Task
from vitkit.utils.spec import InferenceSpec

if TYPE_CHECKING:
    from lightning.pytorch.cli import LightningArgumentParser

CAPTION_LINKS = ("vocab_size", "pad_id", "bos_id", "eos_id")  # datamodule attributes -> text decoder arguments


def link_tokenizer(parser: LightningArgumentParser, network: str) -> None:
    """Link the datamodule's tokenizer values (:data:`CAPTION_LINKS`) and ``max_length`` into ``model.<network>``."""
    for name in CAPTION_LINKS:
        parser.link_arguments(f"data.{name}", f"model.{network}.init_args.{name}", apply_on="instantiate")
    parser.link_arguments("data.max_length", f"model.{network}.init_args.max_length")


def tokenizer_config(config: dict[str, Any], datamodule: Any) -> dict[str, Any]:
    """A text network's resolved config with the datamodule's tokenizer values and ``max_length`` (in place)."""
    for name in CAPTION_LINKS:
        config["init_args"][name] = getattr(datamodule, name)
    config["init_args"]["max_length"] = datamodule.hparams.max_length
    return config


def add_links(parser: LightningArgumentParser) -> None:
    """The tokenizer's vocabulary size and special ids, and the data's ``max_length``, into the captioner; the object
    labels' category count into the module."""
    link_tokenizer(parser, "captioner")
    parser.link_arguments("data.num_object_classes", "model.object_classes", apply_on="instantiate")


def record_configs(configs: Mapping[str, dict[str, Any]], model: Any, datamodule: Any) -> None:
    """The captioner's resolved config, with the tokenizer's values and ``max_length``, into
    ``model.captioner_config``."""
    model.captioner_config = tokenizer_config(configs["captioner"], datamodule)


def spec_tokenizer(spec_: InferenceSpec) -> CaptionTokenizer:
    """The tokenizer a spec stores; ValueError when it cannot be read."""
    try:
        return CaptionTokenizer.from_str(spec_.tokenizer)
    except Exception as err:
        raise ValueError(f"the stored tokenizer cannot be read ({type(err).__name__}: {err})") from err


def predictor(spec_: InferenceSpec, net: nn.Module) -> CaptionPipeline:
    """A CaptionPipeline with the spec's tokenizer and generation defaults."""
    return CaptionPipeline(net, spec_tokenizer(spec_), size=spec_.size, max_size=spec_.max_size,
                           generation=spec_.generation)


ONNX = OnnxGraph(graph=caption_onnx.graph, graph_class=caption_onnx.CaptionEncoderExport, inputs=caption_onnx.INPUTS,
                 outputs=caption_onnx.OUTPUTS, dynamic_axes=caption_onnx.DYNAMIC_AXES,
                 trace_inputs=caption_onnx.trace_inputs, compare=caption_onnx.compare,
                 metadata=caption_onnx.onnx_metadata, suffix=".encoder.onnx")
"""The caption encoder's graph; decoding stays in PyTorch (:func:`vitkit.captioning.onnx.decode_memory`)."""

TASK = Task(
    name=spec.NAME, networks=("captioner",), module_class=CaptionModule, datamodule_class=CaptionDataModule,
    monitor="val/CIDEr", ckpt_filename="epoch{epoch:03d}-cider{val/CIDEr:.3f}", add_links=add_links,
    record_configs=record_configs, spec=spec.FIELDS, network_class=Captioner, predictor_class=CaptionPipeline,
    predictor=predictor, network=lambda pipe: pipe.captioner, predictor_spec=spec.predictor_spec,
    state_prefix="captioner.", onnx=ONNX)
"""Captioning, as :mod:`vitkit.io`, :mod:`vitkit.cli` and the inference spec see it."""
