"""The installed ``vitkit`` script as a user types it (``[project.scripts]``; ``pip install -e .`` writes it next to
the interpreter), run from a folder outside the repository: the command list, a shipped config found by name, an
unknown name, and ``vitkit detect`` writing what ``tools/detect.py`` writes. And what keeps the command fast to
start (issue 30; ``python -m benchmarks.cli_startup`` times it): ``import vitkit``, ``vitkit --help`` and each
``vitkit COMMAND --help`` but ``train`` import no torch, in a fresh interpreter."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.configs import SHIPPED
from tests.support.mixed_images import noise
from tests.support.tiny_checkpoints import save_detector

REPO = Path(__file__).resolve().parents[2]
VITKIT = Path(sys.executable).parent / "vitkit"

pytestmark = pytest.mark.skipif(not VITKIT.is_file(), reason="no vitkit script: run `pip install -e .` first")


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


@pytest.mark.parametrize("command", [[str(VITKIT)], [sys.executable, "-m", "vitkit"]], ids=["script", "python-m"])
def test_help_lists_the_commands_with_examples(command, tmp_path):
    proc = _run([*command, "--help"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in ("train", "eval", "detect", "caption", "describe", "export", "make-shapes", "convert-vg", "plot-pr"):
        assert f"\n  {name} " in proc.stdout, name
    assert "benchmark" not in proc.stdout  # a checkout tool now: python -m benchmarks.runner
    assert "examples:" in proc.stdout and "vitkit detect photos/ --ckpt" in proc.stdout
    assert ", ".join(SHIPPED) in proc.stdout


def test_train_finds_a_shipped_config_by_name(tmp_path):
    """From a folder with no configs/ in it: the name resolves to the shipped file, whose name names the run."""
    proc = _run([str(VITKIT), "train", "detr_shapes", "--print_config"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = yaml.safe_load(proc.stdout)
    shipped = yaml.safe_load((REPO / "vitkit" / "configs" / "detr_shapes.yaml").read_text())
    assert printed["task"] == "detection" and printed["data"]["root"] == shipped["data"]["root"]
    assert printed["model"]["detector"]["init_args"]["num_queries"] == shipped["model"]["detector"]["init_args"][
        "num_queries"]
    assert printed["checkpoint"]["dirpath"] == "runs/detr_shapes/checkpoints"
    assert not (tmp_path / "runs").exists()  # nothing was trained


def test_unknown_config_name_lists_the_shipped_ones(tmp_path):
    proc = _run([str(VITKIT), "train", "detr_shapez"], cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: config detr_shapez: no such file, and no shipped config has that name")
    assert ", ".join(SHIPPED) in proc.stderr and proc.stderr.count("\n") == 1


def test_detect_writes_what_tools_detect_writes(tmp_path):
    ckpt = save_detector(tmp_path / "det.ckpt")
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    noise(40, 56, 1).save(images / "a.png")
    noise(64, 48, 2).save(images / "sub" / "b.jpg", quality=95)
    (images / "broken.png").write_bytes(b"not an image")
    options = ["--ckpt", str(ckpt), "--score-threshold", "0", "--device", "cpu", "--precision", "fp32",
               "--workers", "0"]
    outputs = {}
    for name, command in (("vitkit", [str(VITKIT), "detect"]),
                          ("tool", [sys.executable, str(REPO / "tools" / "detect.py")])):
        out = tmp_path / name / "dets.json"
        proc = _run([*command, str(images), "--out", str(out), *options], cwd=tmp_path)
        assert proc.returncode == 3, proc.stderr[-3000:]  # the broken file: reported, the run goes on
        assert "Traceback" not in proc.stderr and "broken.png" in proc.stderr
        outputs[name] = (json.loads(out.read_text()), json.loads(out.with_name("dets.images.json").read_text()),
                         proc.stdout.strip().splitlines()[-1].split(" in ")[0])  # the summary without time
    vitkit_dets, tool_dets = outputs["vitkit"][0], outputs["tool"][0]
    assert len(vitkit_dets) == 10 and vitkit_dets == tool_dets  # 5 queries x 2 readable images, box for box
    assert outputs["vitkit"][1:] == outputs["tool"][1:]  # the same image list and summary line
    assert outputs["vitkit"][2] == "detected 2, failed 1 (10 boxes)"


def _fresh(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter, from a folder outside the repository."""
    return _run([sys.executable, "-c", code], cwd=tmp_path)


def test_import_vitkit_and_its_version_load_no_torch(tmp_path):
    proc = _fresh("import sys, vitkit; vitkit.__version__; print('torch' in sys.modules)", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "False"


def test_vitkit_load_is_imported_on_first_use():
    import vitkit
    from vitkit.io.load import load

    assert vitkit.__all__ == ["__version__", "load"]
    assert "load" in dir(vitkit) and "__version__" in dir(vitkit)
    assert vitkit.load is load
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        vitkit.nope  # noqa: B018


_HELP_IMPORTS = """
import contextlib, io, json, sys
from vitkit.cli.main import main
with contextlib.redirect_stdout(io.StringIO()):
    for argv in {argvs!r}:
        try:
            status = main(argv)
        except SystemExit as stop:  # a command's argparse --help
            status = stop.code
        assert status == 0, (argv, status)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "lightning", "vitkit"))))
"""


def _modules_after(argvs: list[list[str]], tmp_path: Path) -> list[str]:
    proc = _fresh(_HELP_IMPORTS.format(argvs=argvs), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_help_and_version_import_no_command_and_no_torch(tmp_path):
    from vitkit.cli.main import commands

    table = commands()

    modules = _modules_after([["--help"], ["--version"]], tmp_path)
    assert "vitkit.cli.main" in modules and "vitkit.cli.configs" in modules  # the help lists the shipped configs
    assert not [m for m in modules if m.split(".")[0] in ("torch", "lightning")], modules
    assert not {command.module for command in table.values()} & set(modules)


def test_command_help_imports_no_torch(tmp_path):
    """Each command builds its parser from light imports; torch and the task packages load after parsing."""
    from vitkit.cli.main import commands

    table = commands()

    names = [name for name in table if name != "train"]  # LightningCLI builds train's parser from the classes
    modules = _modules_after([[name, "--help"] for name in names], tmp_path)
    assert not [m for m in modules if m.split(".")[0] in ("torch", "lightning")], modules
    assert {table[name].module for name in names} <= set(modules)  # each command's parser did run


def test_every_command_names_a_module_with_a_main():
    from vitkit.cli.main import commands

    table = commands()

    assert "benchmark" not in table  # a checkout tool: python -m benchmarks.runner
    for name, command in table.items():
        assert importlib.util.find_spec(command.module) is not None, name
        assert callable(importlib.import_module(command.module).main), name


def test_defaults_named_in_the_parsers_agree_with_the_code_that_uses_them():
    """eval and convert-vg name a few constants of heavy modules so that their --help needs no torch."""
    from vitkit.cli import convert_vg
    from vitkit.cli import eval as eval_command
    from vitkit.data.region_captions import MAX_CAPTION_CHARS
    from vitkit.data.visual_genome import DEFAULT_VAL_FRACTION
    from vitkit.eval.coco_eval import BACKENDS

    assert eval_command.BACKENDS == BACKENDS
    assert convert_vg.MAX_CAPTION_CHARS == MAX_CAPTION_CHARS
    assert convert_vg.DEFAULT_VAL_FRACTION == DEFAULT_VAL_FRACTION


def test_the_benchmark_command_says_where_the_benchmarks_went(tmp_path):
    proc = _run([str(VITKIT), "benchmark", "--quick"], cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("vitkit: error: unknown command 'benchmark'")
    assert "python -m benchmarks.runner" in proc.stderr
