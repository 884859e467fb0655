"""The benchmarks are a checkout tool that uses vitkit as a user does (issue 30): no ``vitkit.cli`` module but the
``vitkit`` command's entry (:func:`vitkit.cli.main.main`), no ``sys.path`` tricks (they run as ``python -m
benchmarks.NAME`` from the repository root), and the command's start-up benchmark's report on a fake clock."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from benchmarks import cli_startup

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _imported_modules(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return names


@pytest.mark.parametrize("path", sorted(BENCHMARKS.glob("*.py")), ids=lambda p: p.name)
def test_benchmarks_use_no_cli_internals_and_no_sys_path(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    cli = [m for m in _imported_modules(tree) if m.startswith("vitkit.cli")]
    assert set(cli) <= {"vitkit.cli.main", "vitkit.cli.main.main"}, cli
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "path"
                and isinstance(n.value, ast.Name) and n.value.id == "sys"]


def test_cli_startup_reports_medians_and_the_ratio_to_the_torch_import() -> None:
    times = {"vitkit --help": [0.3, 0.2, 0.4], "vitkit caption --help": [0.5, 2.5, 0.6],
             "import vitkit": [0.1, 0.1, 0.1], "import torch": [1.0, 2.0, 1.5]}
    recs = {r["command"]: r for r in cli_startup.records(times)}
    assert set(recs) == set(cli_startup.COMMANDS)
    assert recs["vitkit --help"]["median_s"] == 0.3 and recs["vitkit --help"]["ratio_to_import_torch"] == 0.2
    assert recs["vitkit --help"]["target_met"] and recs["vitkit caption --help"]["target_met"]  # medians count
    assert recs["import torch"]["ratio_to_import_torch"] == 1.0 and "target" not in recs["import torch"]
    assert "vitkit caption --help" in cli_startup.table(list(recs.values()))
