"""Captioning a folder: vitkit.load -> CaptionPipeline, caption_folder and tools/caption.py as a user types it.

A tiny random Captioner (patch 16, width 32, one layer each side) and a word-level tokenizer go into a checkpoint
laid out as tools/train.py writes it; the images are a mixed folder of every mode, odd sizes and bad files.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import vitkit
from tests.support.cli import run_main
from tests.support.mixed_images import BAD, GOOD
from tests.support.mixed_images import make_mixed_folder as _make_folder
from tests.support.mixed_images import noise as _noise
from tests.support.tiny_checkpoints import CAPTIONER_CONFIG, SENTENCES, VAL_SIZE, save_captioner, tiny_captioner
from vitkit.captioning import Captioner, CaptionTokenizer
from vitkit.captioning.folder import CaptionOutput, caption_folder
from vitkit.captioning.predictor import CaptionPipeline
from vitkit.data.folder import resolve_device
from vitkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, RandomShortestSideResize, resized_size

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]
CAPTION = REPO / "tools" / "caption.py"
@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> tuple[Path, Captioner, CaptionTokenizer]:
    tokenizer = CaptionTokenizer.train(SENTENCES, model="wordlevel")
    model = tiny_captioner(tokenizer)
    path = save_captioner(tmp_path_factory.mktemp("ckpt") / "last.ckpt", model, tokenizer)
    return path, model, tokenizer


@pytest.fixture(scope="module")
def pipe(model_files) -> CaptionPipeline:
    return vitkit.load(model_files[0])


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return _make_folder(tmp_path_factory.mktemp("images"))


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(CAPTION), *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ----------------------------------------------------------------------------------------------- vitkit.load
def test_load_gives_a_pipeline_matching_the_captioner(model_files, pipe, folder):
    _, model, tokenizer = model_files
    assert isinstance(pipe, CaptionPipeline) and not pipe.training
    assert (pipe.size, pipe.max_size) == (VAL_SIZE, 2 * VAL_SIZE)
    paths = [folder / f for f in ("A.JPG", "large.jpg", "sub/deep/c.Jpeg")]
    # the training side's validation preprocessing, written out independently
    resize = RandomShortestSideResize(VAL_SIZE, max_size=2 * VAL_SIZE)
    from torchvision.transforms.v2 import functional as F

    images = []
    for p in paths:
        t = F.to_dtype(resize(F.pil_to_tensor(Image.open(p).convert("RGB"))), torch.float32, scale=True)
        images.append(F.normalize(t, IMAGENET_MEAN, IMAGENET_STD))
    from vitkit.data.collate import pad_images

    batch, mask = pad_images(images)
    for method, kw in (("greedy", {}), ("beam", {"num_beams": 3})):
        ids, scores = model.generate(batch, mask, method=method, **kw)
        got = pipe.caption([str(p) for p in paths], method=method, **kw)
        assert [g["caption"] for g in got] == tokenizer.decode_batch(ids)
        assert [g["score"] for g in got] == pytest.approx(scores.tolist(), abs=1e-5)
    # default: beam search with 3 beams; PIL images and uint8 tensors give the same as paths
    default = pipe.caption([str(p) for p in paths])
    assert default == got
    for alone in (pipe.caption(Image.open(paths[0]))[0], pipe.caption(F.pil_to_tensor(Image.open(paths[0])))[0]):
        # alone vs in a padded batch: same caption; the score up to float summation order over padded keys
        assert alone["caption"] == got[0]["caption"] and alone["score"] == pytest.approx(got[0]["score"], abs=1e-5)
    assert len({g["caption"] for g in pipe.caption([str(folder / f) for f in GOOD], method="greedy")}) > 1


def test_batching_does_not_change_captions(pipe, folder):
    paths = [str(folder / f) for f in GOOD]
    alone = pipe.caption(paths, batch_size=1, method="greedy")
    batched = pipe.caption(paths, batch_size=len(paths), method="greedy")
    assert [a["caption"] for a in alone] == [b["caption"] for b in batched]
    assert [a["score"] for a in alone] == pytest.approx([b["score"] for b in batched], abs=1e-4)


def test_generation_defaults_and_bad_options(model_files, tmp_path):
    _, model, tokenizer = model_files
    # CaptionModule's validation decoding (val_beams, for speed) is not an inference default
    hp = {"val_beams": 1, "lr": 0.1}
    pipe = vitkit.load(save_captioner(tmp_path / "val.ckpt", model, tokenizer, hyper_parameters=hp))
    assert pipe.generation == {"method": "beam", "num_beams": 3, "max_length": None, "min_length": 0,
                               "length_penalty": 1.0, "no_repeat_ngram_size": 0}
    # defaults a spec records (an export of a pipeline holds them) are taken
    generation = {"num_beams": 1, "max_length": 5}
    pipe = vitkit.load(save_captioner(tmp_path / "gen.ckpt", model, tokenizer, spec_changes={"generation": generation}))
    assert pipe.generation_options() == {**pipe.generation, "method": "greedy", "num_beams": 1, "max_length": 5}
    with pytest.raises(ValueError, match="exceeds this captioner's limit of 8"):
        pipe.caption(torch.zeros(3, 8, 8, dtype=torch.uint8), max_length=9)
    with pytest.raises(ValueError, match="method"):
        pipe.caption(torch.zeros(3, 8, 8, dtype=torch.uint8), method="nucleus")
    bigger = CaptionTokenizer.train([*SENTENCES, "zebra giraffe"], model="wordlevel")
    with pytest.raises(ValueError, match="do not belong together"):
        CaptionPipeline(model, bigger)
    assert resized_size(1, 10000, 224, 448) == (1, 448)  # torchvision would round the short side to 0
    assert resized_size(800, 1200, 224, 448) == (224, 336)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")  # unpickling would create the marker file


def test_load_refuses_pickled_code_and_unknown_checkpoints(tmp_path, model_files):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"vitkit_captioner_config": CAPTIONER_CONFIG, "payload": _Evil(marker)}, evil)
    assert not marker.exists()
    with pytest.raises(ValueError, match="weights_only=True"):
        vitkit.load(evil)
    assert not marker.exists()

    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(ValueError, match=r"no 'vitkit_spec' \(the inference spec\)"):
        vitkit.load(other)
    _, model, tokenizer = model_files
    no_tok = save_captioner(tmp_path / "notok.ckpt", model, tokenizer, spec_changes={"tokenizer": None})
    with pytest.raises(ValueError, match=r"vitkit_spec.*field 'tokenizer' is required"):
        vitkit.load(no_tok)
    with pytest.raises(FileNotFoundError):
        vitkit.load(tmp_path / "missing.ckpt")


# ----------------------------------------------------------------------------------------------- caption_folder
def test_caption_folder_records_order_exif_and_first_frame(pipe, folder, tmp_path):
    out = tmp_path / "c.jsonl"
    summary = caption_folder(pipe, folder, out, batch_size=5, method="greedy")
    assert (summary.done, summary.failed, summary.skipped) == (len(GOOD), len(BAD), 0)
    records = _jsonl(out)
    assert [r["file"] for r in records] == sorted(GOOD + BAD)
    by_file = {r["file"]: r for r in records}
    for f in BAD:
        assert set(by_file[f]) == {"file", "error"} and by_file[f]["error"]
    assert [f for f, _ in summary.failures] == BAD
    # EXIF orientation applied, first GIF frame used: same as captioning the upright image / frame 0
    upright = Image.open(folder / "rotated.jpg").transpose(Image.Transpose.ROTATE_270)
    assert upright.size == (24, 48)
    with Image.open(folder / "anim.gif") as gif:
        first = gif.convert("RGB")
    for f, image in (("rotated.jpg", upright), ("anim.gif", first)):
        expected = pipe.caption(image, method="greedy")[0]
        assert by_file[f]["caption"] == expected["caption"]
        assert by_file[f]["score"] == pytest.approx(expected["score"], abs=1e-4)

    flat = caption_folder(pipe, folder, tmp_path / "flat.jsonl", recursive=False, method="greedy")
    assert flat.done == len([f for f in GOOD if "/" not in f])


def test_caption_folder_isolates_a_failing_image(pipe, folder, tmp_path, monkeypatch):
    """A model error on one image (here: the 40 x 900 one, 2 x 64 px after resizing) costs only its own record."""
    generate = pipe.captioner.generate

    def flaky(images, mask=None, **kw):
        if any(int((~m).any(dim=1).sum()) >= 10 * int((~m).any(dim=0).sum()) for m in mask):
            raise RuntimeError("out of memory (simulated)")
        return generate(images, mask, **kw)

    monkeypatch.setattr(pipe.captioner, "generate", flaky)
    out = tmp_path / "c.jsonl"
    summary = caption_folder(pipe, folder, out, batch_size=len(GOOD) + len(BAD), method="greedy")
    failed = {f for f, _ in summary.failures} - set(BAD)
    assert failed == {"thin.png"}
    assert summary.done == len(GOOD) - 1
    assert "simulated" in {r["file"]: r for r in _jsonl(out)}["thin.png"]["error"]


def test_resume_csv_with_partial_last_line(pipe, folder, tmp_path):
    out = tmp_path / "c.csv"
    first = caption_folder(pipe, folder, out, method="greedy")
    assert first.failed == len(BAD)
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert list(rows[0]) == ["file", "caption", "score", "error"]
    assert {r["file"] for r in rows if r["error"]} == set(BAD)
    assert all(r["caption"] and float(r["score"]) < 0 for r in rows if not r["error"])
    # a killed run: the row of tiny.png was being written (half of it is there, at the end)
    lines = out.read_text().splitlines(keepends=True)
    tiny = next(line for line in lines if line.startswith("tiny.png,"))
    out.write_text("".join(line for line in lines if line is not tiny) + tiny[: len(tiny) // 2])
    again = caption_folder(pipe, folder, out, method="greedy")
    assert (again.done, again.failed, again.skipped) == (1, len(BAD), len(GOOD) - 1)
    rows2 = list(csv.DictReader(io.StringIO(out.read_text())))
    assert sorted(r["file"] for r in rows2) == sorted(GOOD + BAD)  # one row per image, the partial one gone
    new, old = {r["file"]: r for r in rows2}["tiny.png"], {r["file"]: r for r in rows}["tiny.png"]
    assert new["caption"] == old["caption"] and float(new["score"]) == pytest.approx(float(old["score"]), abs=1e-4)


def test_output_that_is_not_ours_is_left_alone(pipe, folder, tmp_path):
    out = tmp_path / "notes.jsonl"
    out.write_text('{"file": "A.JPG", "caption": "x", "score": -1}\nsome prose\nmore prose\n')
    before = out.read_text()
    with pytest.raises(ValueError, match="line 2 is not a caption record"):
        caption_folder(pipe, folder, out)
    assert out.read_text() == before
    with pytest.raises(ValueError, match="not a caption CSV"):
        caption_folder(pipe, folder, out, fmt="csv")
    with pytest.raises(FileNotFoundError):
        caption_folder(pipe, tmp_path / "nope", tmp_path / "x.jsonl")
    assert CaptionOutput(tmp_path / "x.CSV", None).fmt == "csv"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------------------------- tools/caption.py
def _caption_main():
    """tools/caption.py's main(), imported in-process (no interpreter start-up, for the cheaper CLI checks)."""
    spec = importlib.util.spec_from_file_location("caption_tool", CAPTION)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_cli_mixed_folder_then_resume(model_files, tmp_path):
    ckpt = model_files[0]
    images = _make_folder(tmp_path / "images")
    out = tmp_path / "out" / "captions.jsonl"
    proc = _run(str(images), "--ckpt", str(ckpt), "--out", str(out), "--beam", "2", "--batch-size", "4",
                "--workers", "1", "--device", "auto", cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith(f"captioned {len(GOOD)}, failed {len(BAD)}, skipped 0 (already done) in ")
    assert all(f"failed: {f}:" in proc.stderr for f in BAD)
    records = _jsonl(out)
    assert [r["file"] for r in records] == sorted(GOOD + BAD)
    for r in records:
        if r["file"] in BAD:
            assert set(r) == {"file", "error"}
        else:
            assert set(r) == {"file", "caption", "score"} and isinstance(r["caption"], str)
            assert isinstance(r["score"], float)

    # resume: the bad files are replaced by images and a killed run left half a line: only they are redone
    for seed, name in enumerate(BAD):
        _noise(10 + seed, 10, 99).save(images / name, format="JPEG" if name.endswith(".jpg") else "PNG")
    with open(out, "a") as f:
        f.write('{"file": "A.JPG", "capt')
    proc = _run(str(images), "--ckpt", str(ckpt), "--out", str(out), "--beam", "2", "--workers", "0",
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith(f"captioned {len(BAD)}, failed 0, skipped {len(GOOD)} ")
    again = _jsonl(out)
    assert sorted(r["file"] for r in again) == sorted(GOOD + BAD)  # never duplicated, the partial line gone
    assert [r for r in again if r["file"] in GOOD] == [r for r in records if r["file"] in GOOD]  # untouched
    assert all("caption" in r for r in again)


def test_cli_csv_greedy_in_process(model_files, folder, tmp_path, capsys):
    main = _caption_main()
    csv_out = tmp_path / "sub.csv"
    status = main([str(folder / "sub"), "--ckpt", str(model_files[0]), "--out", str(csv_out), "--format", "csv",
                   "--beam", "1", "--workers", "0", "--device", "cpu"])
    assert status == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("captioned 2, failed 0, skipped 0 ")
    rows = list(csv.DictReader(io.StringIO(csv_out.read_text())))
    assert [r["file"] for r in rows] == ["B.PNG", "deep/c.Jpeg"] and all(r["error"] == "" for r in rows)
    status = main([str(folder), "--ckpt", str(model_files[0]), "--out", str(tmp_path / "all.csv"), "--workers", "0",
                   "--no-recursive"])
    captured = capsys.readouterr()
    assert status == 3 and f"failed {len(BAD)}" in captured.out and "failed: empty.jpg:" in captured.err
    assert "sub/" not in (tmp_path / "all.csv").read_text()  # format from the suffix, subfolders left out


def test_cli_usage_errors(model_files, folder, tmp_path, capfd, monkeypatch):
    ckpt = str(model_files[0])
    main = _caption_main()
    monkeypatch.chdir(tmp_path)
    cases = [
        ((str(tmp_path / "nope"), "--ckpt", ckpt), "image folder not found"),
        ((str(folder / "A.JPG"), "--ckpt", ckpt), "not a folder"),
        ((str(folder), "--ckpt", str(tmp_path / "missing.ckpt")), "checkpoint not found"),
    ]
    for args, message in cases:  # in process, output captured at the file descriptors (tests.support.cli)
        proc = run_main(main, args, capfd)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    proc = run_main(main, (str(folder), "--ckpt", ckpt, "--beam", "0"), capfd)
    assert proc.returncode == 2 and "--beam" in proc.stderr

    not_ckpt = tmp_path / "not.ckpt"
    not_ckpt.write_text("hello")
    out = tmp_path / "c.jsonl"
    assert main([str(folder), "--ckpt", str(not_ckpt), "--out", str(out)]) == 2
    assert "cannot be loaded safely" in capfd.readouterr().err
    out.write_text("prose, not captions\nmore prose\n")
    assert main([str(folder), "--ckpt", ckpt, "--out", str(out), "--workers", "0"]) == 2
    err = capfd.readouterr().err
    assert "line 1 is not a caption record" in err and err.count("\n") == 1
    assert out.read_text() == "prose, not captions\nmore prose\n"
