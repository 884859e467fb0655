"""The ``vitkit`` command in-process (the fast tier; tests/cli/test_cli_main.py runs the installed script): config
lookup by path or shipped name, the task a config trains, the command table and every command's ``--help``."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.configs import SHIPPED
from vitkit.captioning.task import TASK as CAPTIONING
from vitkit.cli import eval as eval_command
from vitkit.cli import main, train
from vitkit.cli.configs import SHIPPED_CONFIGS, read_config, resolve_config, shipped_configs
from vitkit.cli.train import TaskCLI, select_task
from vitkit.describe.task import TASK as DESCRIBE
from vitkit.detection.task import TASK as DETECTION
from vitkit.kernels import precision as precision_mod
from vitkit.kernels.precision import CPU_BF16_ENV
from vitkit.training.guards import ConfigError

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------------ config lookup
def test_shipped_configs_live_in_the_package_and_the_repository_link_points_there():
    assert shipped_configs() == SHIPPED
    assert SHIPPED_CONFIGS == REPO / "vitkit" / "configs"
    assert (REPO / "configs").resolve() == SHIPPED_CONFIGS.resolve()  # configs/ at the root is a link


def test_a_config_is_found_by_path_or_by_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for arg in ("detr_shapes", "detr_shapes.yaml", "detr_shapes.yml"):
        assert resolve_config(arg) == SHIPPED_CONFIGS / "detr_shapes.yaml"
    mine = tmp_path / "detr_shapes.yaml"  # a file of that name in the working folder wins
    mine.write_text("model: {detector: {}}\n")
    assert resolve_config("detr_shapes.yaml") == Path("detr_shapes.yaml")
    assert resolve_config(str(mine)) == mine
    assert resolve_config("detr_shapes") == SHIPPED_CONFIGS / "detr_shapes.yaml"  # no file named so: shipped


@pytest.mark.parametrize("arg", ["nope", "nope.yaml", "elsewhere/detr_shapes.yaml"])
def test_an_unknown_config_lists_the_shipped_names(arg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        resolve_config(arg)
    assert f"config {arg}: no such file" in str(err.value) and "Fix:" in str(err.value)
    assert ", ".join(SHIPPED) in str(err.value)


def test_unreadable_configs_are_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="not a mapping"):
        read_config(bad)


# ------------------------------------------------------------------------------------------------ task selection
@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_selects_its_task(name):
    task = select_task(read_config(resolve_config(name)))
    expected = {"caption": CAPTIONING, "describe": DESCRIBE, "detr": DETECTION}[name.split("_")[0]]
    assert task is expected
    assert task.name == {CAPTIONING: "captioning", DESCRIBE: "describe", DETECTION: "detection"}[expected]


def test_task_key_and_model_section():
    assert select_task({"model": {"detector": {}}}) is DETECTION
    assert select_task({"model": {"captioner": {}}}) is CAPTIONING
    assert select_task({"task": "captioning", "model": {"captioner": {}}}) is CAPTIONING
    assert select_task({"task": "detection"}) is DETECTION  # stated, the model section left to the parser
    cases = [
        ({"model": {"lr": 1.0}}, "names no network"),
        ({}, "names no network"),
        ({"model": {"detector": {}, "captioner": {}}}, "names two networks"),
        ({"task": "segmentation", "model": {"detector": {}}}, "'segmentation' is not a task"),
        ({"task": "captioning", "model": {"detector": {}}}, "does not train model.detector"),
    ]
    for config, needle in cases:
        with pytest.raises(ConfigError) as err:
            select_task(config, "my.yaml")
        assert "config my.yaml: " in str(err.value) and needle in str(err.value) and "Fix:" in str(err.value)


def test_a_detector_with_a_text_decoder_trains_describe():
    assert select_task({"model": {"detector": {}, "text": {}}}) is DESCRIBE
    assert select_task({"task": "describe", "model": {"detector": {}, "text": {}}}) is DESCRIBE
    assert select_task({"task": "describe"}) is DESCRIBE
    cases = [
        ({"model": {"text": {}}}, "names no network"),
        ({"model": {"detector": {}, "text": {}, "captioner": {}}}, "names two networks"),
        ({"task": "detection", "model": {"detector": {}, "text": {}}}, "does not train model.detector and model.text"),
        ({"task": "describe", "model": {"captioner": {}}}, "Fix: configure model.detector and model.text,"),
    ]
    for config, needle in cases:
        with pytest.raises(ConfigError) as err:
            select_task(config, "my.yaml")
        assert "config my.yaml: " in str(err.value) and needle in str(err.value) and "Fix:" in str(err.value)
    with pytest.raises(ConfigError) as err:
        select_task({"model": {}})
    assert "model.detector and model.text (describe)" in str(err.value)


class _Links:
    """A parser that records ``link_arguments`` calls (no parsing: the links alone)."""

    def __init__(self, task) -> None:
        self.links: list[tuple[str, str]] = []
        task.add_links(self)

    def link_arguments(self, source, target, **kwargs):
        self.links.append((source, target))


def test_the_describe_cli_is_detection_plus_the_tokenizer_links():
    assert (DESCRIBE.name, DESCRIBE.monitor, DESCRIBE.networks) == ("describe", "val/AP", ("detector", "text"))
    links = _Links(DESCRIBE).links
    assert set(_Links(DETECTION).links) < set(links)  # detection's links, and more
    assert ("data.num_classes", "model.detector.init_args.num_classes") in links
    for name in ("vocab_size", "pad_id", "bos_id", "eos_id", "max_length"):
        assert (f"data.{name}", f"model.text.init_args.{name}") in links


def test_each_task_cli_adds_only_its_own_links():
    detection, captioning = set(_Links(DETECTION).links), set(_Links(CAPTIONING).links)
    assert detection and captioning and not detection & captioning
    assert all(target.startswith(("model.detector.", "model.num_classes", "model.class_names", "model.label_to_cat"))
               for _, target in detection)
    assert (DETECTION.monitor, CAPTIONING.monitor) == ("val/AP", "val/CIDEr")


def test_a_task_key_in_a_config_trains(tmp_path, monkeypatch, capsys):
    """``task:`` is a key the parser accepts (and prints in the resolved config); another task's name is refused."""
    recipe = yaml.safe_load((SHIPPED_CONFIGS / "caption_shapes.yaml").read_text())
    config = tmp_path / "stated.yaml"
    config.write_text(yaml.safe_dump({"task": "captioning", **recipe}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["vitkit"])
    with pytest.raises(SystemExit) as exit_:
        main.main(["train", str(config), "--print_config"])
    assert exit_.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["task"] == "captioning" and printed["checkpoint"]["dirpath"] == "runs/stated/checkpoints"
    config.write_text(yaml.safe_dump({"task": "detection", **recipe}))
    with pytest.raises(SystemExit) as exit_:
        main.main(["train", str(config)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: config {config}: task 'detection' does not train model.captioner") and "Fix:" in err


def test_eval_of_a_checkpoint_needs_a_detection_config(tmp_path, capsys):
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"")
    assert eval_command.main(["caption_shapes", "--ckpt", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert "caption_shapes.yaml trains captioning; --ckpt evaluates detection models" in err and err.count("\n") == 1
    assert eval_command.main(["nope", "--ckpt", str(ckpt)]) == 2
    assert ", ".join(SHIPPED) in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ the command
def test_help_lists_every_command_with_examples(capsys):
    assert main.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("train", "eval", "detect", "caption", "describe", "export", "make-shapes", "plot-pr"):
        assert f"\n  {name} " in out
    assert "examples:\n  vitkit train detr_shapes" in out and ", ".join(SHIPPED) in out
    assert main.main([]) == 2 and "usage: vitkit COMMAND" in capsys.readouterr().err
    assert main.main(["--version"]) == 0 and capsys.readouterr().out.startswith("vitkit ")


@pytest.mark.parametrize("name", sorted(main.commands()))
def test_every_command_help_gives_examples(name, capsys):
    try:
        status = main.main([name, "--help"])
    except SystemExit as exit_:  # argparse's --help
        status = exit_.code
    assert status == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: vitkit {name}") and f"examples:\n  vitkit {name} " in out


def test_unknown_command_suggests_the_closest(capsys):
    assert main.main(["trian", "detr_shapes"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'trian' (did you mean 'train'?)" in err and err.count("\n") == 1


def test_train_gets_the_whole_command_line_for_ddp_relaunch(monkeypatch):
    """Lightning's DDP launcher starts the other ranks by re-running sys.argv: it must hold ``train`` too."""
    seen = {}

    def fake_main(argv: list[str], prog: str, launch_argv: list[str]) -> int:
        seen.update(argv=argv, prog=prog, launch_argv=launch_argv)
        return 0

    monkeypatch.setattr(train, "main", fake_main)
    monkeypatch.setattr(sys, "argv", ["/venv/bin/vitkit", "train", "detr_shapes", "--trainer.devices", "2"])
    assert main.main() == 0
    assert seen == {"argv": ["detr_shapes", "--trainer.devices", "2"], "prog": "vitkit train",
                    "launch_argv": ["/venv/bin/vitkit", "train", "detr_shapes", "--trainer.devices", "2"]}


def test_tools_are_thin_shims():
    for tool in sorted((REPO / "tools").glob("*.py")):
        text = tool.read_text()
        assert f"from vitkit.cli.{tool.stem} import main" in text and len(text.splitlines()) <= 12, tool.name


@pytest.mark.parametrize("native", [False, True])
def test_bf16_training_config_on_a_cpu_without_native_bf16_trains_in_fp32(native, tmp_path, monkeypatch):
    """The shipped shapes config asks for bf16-mixed; the trainer the CLI builds keeps it only where the CPU runs
    bf16 natively (emulated bf16 measured ~30x slower than fp32 on an AVX2 CPU)."""
    monkeypatch.setattr(precision_mod, "bf16_is_fast", lambda device="cpu": native)
    monkeypatch.delenv(CPU_BF16_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["vitkit"])
    assert read_config(SHIPPED_CONFIGS / "detr_shapes.yaml")["trainer"]["precision"] == "bf16-mixed"
    with pytest.warns(UserWarning, match="32-true") if not native else contextlib.nullcontext():
        cli = TaskCLI(DETECTION, run=False, args=["--config", str(SHIPPED_CONFIGS / "detr_shapes.yaml"),
                                                  "--data.root", str(tmp_path / "shapes"), "--data.shapes_train", "2",
                                                  "--data.shapes_val", "2", "--data.shapes_size", "80"])
    assert cli.trainer.precision == ("bf16-mixed" if native else "32-true")
