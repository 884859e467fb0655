"""The package layout: imports point one way (kernels/utils -> layers -> core -> data -> eval -> viz -> training ->
tasks -> describe -> the task registration -> io -> cli -> the ``vitkit`` root), no import cycle, and no file or
function over the size limits."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from vitkit.tasks import REGISTERED

PACKAGE = Path(__file__).resolve().parents[1] / "vitkit"
# Lower rank = lower level. A module may import from a lower rank or from its own package; packages of the same
# rank (the two tasks; utils and kernels) may not import each other. ``describe`` (region captions) is built from
# both tasks, so it sits above them. ``tasks`` is the top-level module ``vitkit.tasks``, the task registration: it
# names every task's descriptor (imported by name on first use), so it sits above the task packages, and io and the
# cli look tasks up in it, so it sits below them.
RANKS = {"utils": 0, "kernels": 0, "layers": 1, "core": 2, "data": 3, "eval": 4, "viz": 5, "training": 6,
         "detection": 7, "captioning": 7, "describe": 8, "tasks": 9, "io": 10, "cli": 11, "": 12}
# A registered task's package (vitkit.tasks) that RANKS does not list sits on the task level: adding a task is its
# package and its registration line, not an edit here (a task built from other tasks, as describe is, is listed).
TASK_RANK = 7
RANKS.update({entry.descriptor.split(".")[1]: TASK_RANK for entry in REGISTERED
              if entry.descriptor.split(".")[1] not in RANKS})
# Third-party packages a function may import lazily: optional extras, or heavy modules only one path needs.
LAZY_OK = {"onnx", "onnxruntime", "transformers", "matplotlib"}
MAX_FILE_LINES, MAX_FUNCTION_LINES = 450, 80  # a concept that needs more is one file still


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package(module: str) -> str:
    """'vitkit.detection.model' -> 'detection'; the root package 'vitkit' -> ''; top-level modules ('vitkit.version')
    -> 'utils' (they sit below everything, as the utils do), except 'vitkit.__main__' and those RANKS names
    ('vitkit.tasks')."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__main__":  # ``python -m vitkit`` runs the command: the top, as the root
        return ""
    if len(parts) == 2 and parts[1] in RANKS:
        return parts[1]
    return parts[1] if len(parts) > 2 or (PACKAGE / parts[1]).is_dir() else "utils"


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import in ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    local = {id(n) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
    me = _module_name(path).split(".")
    base = me if path.name == "__init__.py" else me[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno, id(node) in local) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, node.lineno, id(node) in local))
            # "from vitkit.x import y" where y is a submodule: an edge to it too
            for a in node.names:
                if (PACKAGE.parent / target.replace(".", "/") / f"{a.name}.py").exists():
                    found.append((f"{target}.{a.name}", node.lineno, id(node) in local))
    return found


FILES = sorted(PACKAGE.rglob("*.py"))


def _deferred_by_cli(path: Path, line: int) -> bool:
    """Whether an import inside a function of ``vitkit/cli`` is marked ``# heavy:`` (on it, or on a comment above
    its import block): a command imports its task after parsing, so ``vitkit COMMAND --help`` loads no torch."""
    if path.parent.name != "cli":
        return False
    lines = path.read_text().splitlines()
    for i in range(line - 1, -1, -1):
        text = lines[i].strip()
        if "# heavy:" in text:
            return True
        if not text.startswith(("from ", "import ", "#")):
            return False
    return False


def test_imports_point_one_way_and_vitkit_imports_sit_at_module_level():
    wrong = []
    for path in FILES:
        mine = _module_name(path)
        for target, line, in_function in _imports(path):
            if not (target == "vitkit" or target.startswith("vitkit.")):
                continue
            where = f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
            if in_function and not _deferred_by_cli(path, line):
                wrong.append(f"{where} inside a function (vitkit imports belong at module level)")
                continue
            src, dst = _package(mine), _package(target)
            if src == dst:
                continue
            if RANKS[dst] >= RANKS[src]:
                wrong.append(f"{where}: {dst or 'vitkit'} (rank {RANKS[dst]}) is not below {src or 'vitkit'} "
                             f"(rank {RANKS[src]})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_between_modules():
    graph = {}
    for path in FILES:
        mine = _module_name(path)
        graph[mine] = {t for t, _, _ in _imports(path) if t.startswith("vitkit.") and t != mine}
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack, node, nxt]
            if nxt in graph and state.get(nxt) is None and (cycle := visit(nxt, [*stack, node])):
                return cycle
        state[node] = 2
        return None

    for node in sorted(graph):
        if state.get(node) is None:
            cycle = visit(node, [])
            assert cycle is None, " -> ".join(cycle[cycle.index(cycle[-1]):])


def test_function_local_imports_load_optional_dependencies_only():
    lazy = sorted({f"{path.relative_to(PACKAGE.parent)}: {target}" for path in FILES
                   for target, line, in_function in _imports(path)
                   if in_function and target.split(".")[0] not in LAZY_OK and not _deferred_by_cli(path, line)})
    assert not lazy, "\n".join(lazy)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_files_and_functions_stay_small(path):
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_FILE_LINES, f"{path.name}: {len(text.splitlines())} lines"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path.name}: " + ", ".join(long)
