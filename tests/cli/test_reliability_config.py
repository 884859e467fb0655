"""Reliability (issue 7, item 7): config mistakes end in one paragraph naming the key and the fix, exit status 2, and
no traceback: a wrong type, an unknown key (also nested in a YAML recipe's class_path argument), and a checkpoint
trained on another class count (``tools/eval.py --ckpt`` and ``tools/train.py --ckpt_path``), data errors met when
the datamodule reads its files (a missing image folder, a malformed training file, train and val categories that
differ, a missing image with ``data.bad_images: fail``), and ``--ckpt_path last`` with no ``last.ckpt``. The unknown
command-line key and the missing data folder run through tools/train.py in tests/cli/test_train_cli.py (and
tests/captioning/test_caption_train.py for captioning).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from tests.support.tiny_checkpoints import lightning_checkpoint
from vitkit.cli.config_errors import explain_config_error
from vitkit.data.shapes import ensure_shapes
from vitkit.detection import DETR
from vitkit.detection.spec import checkpoint_spec as detection_spec
from vitkit.utils.config import instantiate

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "detr_shapes.yaml"
DATA = ["--data.shapes_train", "4", "--data.shapes_val", "2", "--data.shapes_size", "80", "--data.num_workers", "0",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _assert_one_paragraph(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    error = proc.stderr[proc.stderr.index("error:"):]
    for needle in needles:
        assert needle in error, error
    assert "Fix:" in error and len(error.splitlines()) <= 3, error  # no usage wall either
    return error


def test_wrong_type_names_the_key_and_the_expected_type(tmp_path):
    proc = _run([str(REPO / "tools" / "train.py"), str(CONFIG), "--data.batch_size", "two"], cwd=tmp_path)
    _assert_one_paragraph(proc, "'data.batch_size'", "expects an integer", "'two'")


def test_parser_messages_become_one_paragraph():
    keys = ["model.lr", "model.loss_type", "trainer.max_epochs", "data.root"]
    assert "did you mean 'model.lr'" in explain_config_error("unrecognized arguments: --model.lrr 3", keys)
    union = ('Parser key "trainer.max_epochs":\n  Does not validate against any of the Union subtypes\n  Subtypes: '
             "[<class 'int'>, <class 'NoneType'>]\n  Given value type: <class 'str'>\n  Given value: x")
    assert "'trainer.max_epochs' expects an integer or null, got 'x'" in explain_config_error(union, keys)
    literal = 'Parser key "model.nonfinite":\n  Expected a typing.Literal[\'raise\', \'skip\']. Got value: maybe'
    assert "expects one of 'raise', 'skip', got 'maybe'" in explain_config_error(literal, keys)
    assert "Subcommand" not in explain_config_error("Subcommand 'fit' does not accept option 'model.lrr'", keys)
    # a typo inside a class_path argument of a YAML recipe (jsonargparse nests the message)
    nested = ('Parser key "model.detector":\n  Problem with given class_path \'vitkit.detection.DETR\':\n'
              '    Parser key '
              '"encoder":\n      Problem with given class_path \'vitkit.core.ViTEncoder\':\n        Option \'dept\' '
              'is not accepted')
    paragraph = explain_config_error(nested, keys)
    assert "unknown config key 'model.detector.init_args.encoder.init_args.dept'" in paragraph
    assert "did you mean 'model.detector.init_args.encoder.init_args.depth'" in paragraph


# ------------------------------------------------------------------------------ class count vs a checkpoint
@pytest.fixture(scope="module")
def data_and_checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    """A checkpoint of the recipe's detector for the 4 shapes classes, and a COCO-layout dataset with 80 classes."""
    work = tmp_path_factory.mktemp("classes")
    four = work / "four"
    ensure_shapes(four, num_train=4, num_val=2, image_size=80)
    eighty = work / "eighty"
    shutil.copytree(four, eighty)
    for split in ("train", "val"):
        ann_file = eighty / "annotations" / f"instances_{split}2017.json"
        ann = json.loads(ann_file.read_text())
        ann["categories"] += [{"id": 100 + i, "name": f"extra{i}", "supercategory": "extra"} for i in range(76)]
        ann_file.write_text(json.dumps(ann))

    recipe = yaml.safe_load(CONFIG.read_text())
    detector = copy.deepcopy(recipe["model"]["detector"])
    detector["init_args"]["num_classes"] = 4
    torch.manual_seed(0)
    model = instantiate(copy.deepcopy(detector), DETR)
    ckpt = work / "four_classes.ckpt"
    hparams = {"num_classes": 4, "class_names": ["square", "circle", "triangle", "star"],
               "label_to_cat_id": [1, 3, 7, 9]}
    torch.save(lightning_checkpoint(detection_spec(detector, hparams, {}), model, epoch=0, global_step=0,
                                    hyper_parameters=hparams, **{"pytorch-lightning_version": L.__version__}), ckpt)
    return eighty, ckpt


def test_eval_checkpoint_with_other_class_count(data_and_checkpoint, tmp_path, monkeypatch, capsys):
    """tools/eval.py's main, in this process (the subprocess path is the same code as train's, below)."""
    data, ckpt = data_and_checkpoint
    spec = importlib.util.spec_from_file_location("vitkit_tools_eval", REPO / "tools" / "eval.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["eval.py"])
    for name in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):  # seed_everything sets them: undone after the test
        monkeypatch.setenv(name, "0")
    assert tool.main([str(CONFIG), "--ckpt", str(ckpt), "--data.root", str(data), *DATA]) == 2
    err = capsys.readouterr().err
    assert "num_classes" in err and "trained on 4 classes (square, circle" in err
    assert "data.root gives 80 classes" in err and "Fix:" in err


def test_resume_checkpoint_with_other_class_count(data_and_checkpoint, tmp_path):
    data, ckpt = data_and_checkpoint
    proc = _run([str(REPO / "tools" / "train.py"), str(CONFIG), "--ckpt_path", str(ckpt), "--data.root", str(data),
                 *DATA], cwd=tmp_path)
    _assert_one_paragraph(proc, "num_classes", "trained on 4 classes", "data.root gives 80 classes")


# ------------------------------------------------------------------------------------- data errors at setup
@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("setup") / "data"
    ensure_shapes(root, num_train=4, num_val=2, image_size=80)
    return root


def test_missing_image_folder_is_one_paragraph(shapes_root, tmp_path):
    """The annotation files are there, train2017/ is not: named at construction, not a traceback from setup."""
    root = tmp_path / "data"
    shutil.copytree(shapes_root, root)
    shutil.rmtree(root / "train2017")
    proc = _run([str(REPO / "tools" / "train.py"), str(CONFIG), "--data.root", str(root), "--data.generate_shapes",
                 "false", *DATA], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"missing the image folder {root / 'train2017'}" in proc.stderr and "Fix:" in proc.stderr


def _break_train_annotations(root: Path) -> str:
    path = root / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    del data["annotations"][0]["bbox"]
    path.write_text(json.dumps(data))
    return "has no field 'bbox'"


def _other_train_categories(root: Path) -> str:
    path = root / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    data["categories"].append({"id": 99, "name": "hexagon"})
    path.write_text(json.dumps(data))
    return "define different categories"


def _missing_train_image(root: Path) -> str:
    image = sorted((root / "train2017").iterdir())[0]
    image.unlink()
    return f"{image}: file not found"


@pytest.mark.parametrize("breakage", [_break_train_annotations, _other_train_categories, _missing_train_image])
def test_data_errors_raised_at_setup_are_one_paragraph(shapes_root, tmp_path, monkeypatch, capsys, breakage):
    """Errors the datamodule's ``setup`` meets (inside ``trainer.fit``) come out of tools/train.py's main as one
    paragraph with exit status 2, as construction errors do (this process: the subprocess path is the test above)."""
    from vitkit.cli.train import main

    root = tmp_path / "data"
    shutil.copytree(shapes_root, root)
    needle = breakage(root)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    for name in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):  # seed_everything sets them: undone after the test
        monkeypatch.setenv(name, "0")
    with pytest.raises(SystemExit) as exit_:
        main([str(CONFIG), "--data.root", str(root), "--data.generate_shapes", "false", "--data.bad_images", "fail",
              "--trainer.logger", "false", "--trainer.max_epochs", "1", *DATA])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data.root: ") and needle in err and "Fix:" in err, err


def test_caption_missing_image_with_fail_is_one_paragraph(shapes_root, tmp_path, monkeypatch, capsys):
    """Captioning reads the training captions while the CLI links the tokenizer: same paragraph."""
    from vitkit.cli.train import main

    root = tmp_path / "data"
    shutil.copytree(shapes_root, root)
    needle = _missing_train_image(root)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    for name in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):
        monkeypatch.setenv(name, "0")
    with pytest.raises(SystemExit) as exit_:
        main([str(REPO / "configs" / "caption_shapes.yaml"), "--data.root", str(root), "--data.generate_shapes",
              "false", "--data.bad_images", "fail", "--trainer.logger", "false", *DATA])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data.root: ") and needle in err and "bad_images: skip" in err, err


def test_resume_last_without_last_checkpoint_is_one_paragraph(shapes_root, tmp_path):
    """``--ckpt_path last`` in a folder without runs/<config>/checkpoints/last.ckpt: Lightning would only warn and
    train from scratch."""
    proc = _run([str(REPO / "tools" / "train.py"), str(CONFIG), "--data.root", str(shapes_root), "--ckpt_path",
                 "last", "--trainer.max_epochs", "1", *DATA], cwd=tmp_path)
    error = _assert_one_paragraph(proc, "no last.ckpt in", str(tmp_path / "runs" / "detr_shapes" / "checkpoints"),
                                  "run from the folder that holds", "--ckpt_path")
    assert not (tmp_path / "runs" / "detr_shapes" / "checkpoints").exists(), error  # nothing was trained
