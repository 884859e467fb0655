"""The task registration (issue 30): a task is its package plus one line in ``vitkit.tasks``.

A toy task (tests/support/toy_task.py) registered by adding its line loads through ``vitkit.load`` from a
checkpoint, a safetensors export and its own imported format, its folder command is listed and dispatched, and a
config naming its network trains it; unregistered, its spec is refused naming the registered tasks. And the levels
below the registration name no task: ``vitkit/utils/spec.py`` and ``vitkit/io/*.py`` hold no task name as a string.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

import vitkit
import vitkit.tasks
from tests.support import toy_task
from vitkit.cli import main
from vitkit.cli.train import select_task
from vitkit.io.export import export_safetensors, load_safetensors
from vitkit.io.load import build_predictor
from vitkit.utils.spec import SpecError, write_spec

PACKAGE = Path(__file__).resolve().parents[2] / "vitkit"
REGISTERED_NAMES = ("detection", "captioning", "describe")


@pytest.fixture
def registered(monkeypatch):
    """The toy task registered: one more line in the registration."""
    monkeypatch.setattr(vitkit.tasks, "REGISTERED", (*vitkit.tasks.REGISTERED, toy_task.REGISTRATION))


def _toy_checkpoint(path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A toy checkpoint laid out as training writes one: the spec, the weights under the module's prefix."""
    torch.manual_seed(0)
    net = torch.nn.Linear(2, 3)
    ckpt = {"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}
    write_spec(ckpt, toy_task.toy_spec(["a", "b", "c"]))
    torch.save(ckpt, path)
    return path, net.state_dict()


def test_a_registered_task_loads_from_a_checkpoint_an_export_and_its_imported_format(registered, tmp_path):
    assert vitkit.tasks.names() == [*REGISTERED_NAMES, "toy"]
    path, weights = _toy_checkpoint(tmp_path / "toy.ckpt")
    toy = vitkit.load(path)
    assert isinstance(toy, toy_task.ToyPredictor) and not toy.training
    assert toy.class_names == ["a", "b", "c"] and torch.equal(toy.net.weight, weights["weight"])
    report = export_safetensors(toy, toy_task.CONFIG, tmp_path / "toy.safetensors")
    assert report.task == "toy"
    again = load_safetensors(report.path)
    assert again.class_names == ["a", "b", "c"] and torch.equal(again.net.bias, weights["bias"])
    folder = tmp_path / "foreign"
    folder.mkdir()
    (folder / "toy.json").write_text(json.dumps({"class_names": ["x"], "weight": [[1.0, 2.0]] * 3,
                                                 "bias": [0.5] * 3}))
    imported = vitkit.load(folder)  # the toy task's importer, found among the registered tasks' importers
    assert imported.class_names == ["x"] and imported(torch.ones(1, 2)).tolist() == [[3.5] * 3]


def test_a_spec_of_an_unregistered_task_is_refused_naming_the_registered_ones(tmp_path):
    path, _ = _toy_checkpoint(tmp_path / "toy.ckpt")
    with pytest.raises(SpecError) as err:
        vitkit.load(path)
    assert "inference spec field 'task' must be one of ('detection', 'captioning', 'describe'), got 'toy'" \
        in str(err.value) and "toy.ckpt" in str(err.value)
    with pytest.raises(ValueError, match=r"a toy checkpoint; vitkit.load does not build toy models \(it loads "
                                         r"detection, captioning, describe\)"):
        build_predictor(toy_task.toy_spec(), {}, "built")
    with pytest.raises(FileNotFoundError, match="no checkpoint in this folder that vitkit reads"):
        vitkit.load(tmp_path)  # no importer of a registered task reads an empty folder


def test_a_spec_field_the_task_does_not_record_is_refused_naming_its_users(registered):
    spec = toy_task.toy_spec()
    spec.tokenizer = "{}"
    with pytest.raises(SpecError, match="field 'tokenizer' applies to captioning and describe only, not to a toy spec"):
        build_predictor(spec, {}, "built")


def test_the_command_lists_and_runs_a_registered_folder_verb_and_trains_its_config(registered, capsys):
    assert main.main(["--help"]) == 0
    assert "\n  toy-run " in capsys.readouterr().out
    assert main.main(["toy-run", "photos/"]) == 0
    assert capsys.readouterr().out == "vitkit toy-run: photos/\n"
    assert select_task({"model": {"net": {}}}) is toy_task.TASK
    assert select_task({"task": "toy"}) is toy_task.TASK


def _string_literals(path: Path) -> set[str]:
    return {node.value for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Constant)
            and isinstance(node.value, str)}


@pytest.mark.parametrize("path", [PACKAGE / "utils" / "spec.py", *sorted((PACKAGE / "io").glob("*.py"))],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_spec_and_io_name_no_task(path):
    names = set(vitkit.tasks.names()) | set(REGISTERED_NAMES)
    assert not _string_literals(path) & names
