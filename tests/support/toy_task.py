"""A toy task, registered by tests only (tests/io/test_task_registry.py): the whole of what a new task brings.

Its network is a ``torch.nn.Linear`` (a class a stored config may name), its predictor a module that keeps the
network and the one task-specific spec field it records (``class_names``), and it brings a folder command
(``vitkit toy-run``, :func:`main`) and an importer of a foreign format (a folder holding ``toy.json``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from vitkit.tasks import Registration, Verb
from vitkit.training.task import SpecFields, Task
from vitkit.utils.spec import InferenceSpec

NAME = "toy"
FIELDS = SpecFields(used=("class_names",))
CONFIG = {"class_path": "torch.nn.Linear", "init_args": {"in_features": 2, "out_features": 3}}
REGISTRATION = Registration("tests.support.toy_task", (Verb("toy-run", "tests.support.toy_task",
                                                            "run the toy task on every image of a folder"),))
"""The one line that registers the toy task (what a test adds to ``vitkit.tasks.REGISTERED``)."""


class ToyPredictor(nn.Module):
    """The toy task's predictor: its network, class names and sizes."""

    def __init__(self, net: nn.Module, class_names: list[str] | None, size: int, max_size: int | None) -> None:
        super().__init__()
        self.net, self.class_names, self.size, self.max_size = net, class_names, size, max_size

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def toy_spec(class_names: list[str] | None = None, config: dict[str, Any] | None = None) -> InferenceSpec:
    """A toy spec (bound to the toy task's fields, as a task's ``checkpoint_spec`` makes it)."""
    return InferenceSpec(task=NAME, model_config=dict(config or CONFIG), size=32, max_size=None,
                         class_names=class_names).bind(FIELDS)


class ToyImporter:
    """Reads a folder holding ``toy.json`` (``{"class_names": [...], "weight": [[...]], "bias": [...]}``)."""

    description = "toy folders (toy.json)"

    def accepts(self, source: Path | Mapping[str, Any]) -> bool:
        return isinstance(source, Path) and (source / "toy.json").is_file()

    def read(self, path: Path) -> tuple[InferenceSpec, dict[str, Tensor]]:
        data = json.loads((path / "toy.json").read_text())
        return toy_spec(data["class_names"]), {"weight": torch.tensor(data["weight"]),
                                               "bias": torch.tensor(data["bias"])}


def main(argv: list[str], prog: str) -> int:
    """The toy folder command: says what it was given."""
    print(f"{prog}: {' '.join(argv)}")
    return 0


TASK = Task(
    name=NAME, networks=("net",), module_class=L.LightningModule, datamodule_class=L.LightningDataModule,
    monitor="val/loss", ckpt_filename="epoch{epoch:03d}", add_links=lambda parser: None,
    record_configs=lambda configs, model, datamodule: None, spec=FIELDS, network_class=nn.Linear,
    predictor_class=ToyPredictor,
    predictor=lambda spec, net: ToyPredictor(net, spec.class_names, spec.size, spec.max_size),
    network=lambda predictor: predictor.net,
    predictor_spec=lambda predictor, config: toy_spec(predictor.class_names, config),
    state_prefix="net.", importers=(ToyImporter(),))
