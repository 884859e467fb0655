"""The task descriptor (:class:`Task`): everything :mod:`vitkit.io`, :mod:`vitkit.cli` and the inference spec need
to know about one task. Each task package defines ``TASK`` in ``vitkit/<task>/task.py``; :mod:`vitkit.tasks`
registers it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from torch import Tensor, nn

from vitkit.utils.spec import InferenceSpec, SpecFields

if TYPE_CHECKING:
    import lightning as L
    from lightning.pytorch.cli import LightningArgumentParser

__all__ = ["Importer", "OnnxGraph", "SpecFields", "Task"]


class Importer(Protocol):
    """A reader of a foreign checkpoint format (e.g. official DETR weights).

    Attributes:
        description: what it reads, for messages (``"official DETR weights (...)"``)."""

    description: str

    def accepts(self, source: Path | Mapping[str, Any]) -> bool:
        """Whether this importer reads ``source``: a folder or a ``.safetensors`` file without vitkit's spec (a
        path), or the dict a ``torch.load(weights_only=True)`` of a checkpoint file gave. Cheap, and never raises."""

    def read(self, path: Path) -> tuple[InferenceSpec, dict[str, Tensor]]:
        """(inference spec, the network's state dict with vitkit's names) of an accepted ``path``.

        Raises:
            FileNotFoundError, ValueError: what is missing or does not convert, naming the file.
        """


@dataclass(frozen=True, eq=False)
class OnnxGraph:
    """How a task's predictor becomes one traceable ONNX graph (:func:`vitkit.io.onnx_export.export_onnx`).

    Attributes:
        graph: predictor -> the module ONNX traces, in eval mode; graph_class: its class.
        dynamic_axes: the dynamic axes of a dynamic export.
        trace_inputs: (batch, height, width, stride, seed) -> the graph's dummy inputs.
        compare: (eager outputs, onnxruntime outputs, inputs) -> the largest differences by output.
        metadata: predictor -> the task's entries of the graph's metadata.
        suffix: the default suffix of the graph file (``.onnx``, ``.encoder.onnx``).
        check_trace: (graph, dummy inputs) -> None, raising ValueError for a trace that would be wrong; None: none.
        part: predictor -> the predictor of another task whose graph is written instead, or None.
        note: what the export leaves out of the model (or "")."""
    graph: Callable[[nn.Module], nn.Module]
    graph_class: type[nn.Module]
    inputs: list[str]
    outputs: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    trace_inputs: Callable[..., tuple]
    compare: Callable[[tuple, Any, tuple], dict[str, float]]
    metadata: Callable[[nn.Module], dict[str, str]]
    suffix: str = ".onnx"
    check_trace: Callable[[nn.Module, tuple], None] | None = None
    part: Callable[[nn.Module], nn.Module] | None = None
    note: str = ""


@dataclass(frozen=True, eq=False)
class Task:
    """One task, as :mod:`vitkit.io`, :mod:`vitkit.cli` and the inference spec see it; compares by identity.

    Attributes:
        name: a run config's ``task`` key and the spec's ``task``.
        networks: the Lightning module's arguments that take a network config (``("detector", "text")``).
        module_class, datamodule_class: the Lightning module and datamodule the training CLI builds.
        monitor: the metric best checkpoints are kept by (maximised); ckpt_filename: their file name pattern.
        add_links: parser -> None: ``parser.link_arguments`` from the datamodule into the model.
        record_configs: (resolved config per network argument, model, datamodule) -> None: stores the resolved network
            configs in the model for its checkpoints.
        spec: the task-specific fields its inference spec records (:class:`~vitkit.utils.spec.SpecFields`).
        network_class: the class its spec's model config must build; predictor_class: what :func:`vitkit.load` returns.
        predictor: (spec, network with its weights) -> the predictor; ValueError for settings that do not fit.
        network: predictor -> its network (the weights that are saved).
        predictor_spec: (predictor, model config) -> the spec recording the predictor's settings.
        state_prefix: the network's key prefix in a ``.ckpt`` (with the dot), or "".
        state_keys: the network's top-level module names read from a ``.ckpt``; empty: all under ``state_prefix``.
        build: (checked model config) -> the network; None: ``instantiate(config, network_class)``.
        onnx: its ONNX export (:class:`OnnxGraph`), or None.
        importers: readers of foreign checkpoint formats (:class:`Importer`).

    Raises:
        ValueError: a spec of several networks that are not the task's networks."""
    name: str
    networks: tuple[str, ...]
    module_class: type[L.LightningModule]
    datamodule_class: type[L.LightningDataModule]
    monitor: str
    ckpt_filename: str
    add_links: Callable[[LightningArgumentParser], None]
    record_configs: Callable[[Mapping[str, dict[str, Any]], Any, Any], None]
    spec: SpecFields
    network_class: type[nn.Module]
    predictor_class: type[nn.Module]
    predictor: Callable[[InferenceSpec, nn.Module], nn.Module]
    network: Callable[[nn.Module], nn.Module]
    predictor_spec: Callable[[nn.Module, dict[str, Any]], InferenceSpec]
    state_prefix: str
    state_keys: tuple[str, ...] = ()
    build: Callable[[dict[str, Any]], nn.Module] | None = None
    onnx: OnnxGraph | None = None
    importers: tuple[Importer, ...] = ()

    def __post_init__(self) -> None:
        if self.spec.networks and tuple(self.spec.networks) != tuple(self.networks):
            raise ValueError(f"task {self.name}: its spec's networks {self.spec.networks} must be its networks "
                             f"{self.networks}")

    def networks_named(self) -> str:
        """The model keys of the task's networks, for messages: ``model.detector and model.text``."""
        return " and ".join(f"model.{key}" for key in self.networks)
