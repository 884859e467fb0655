"""``vitkit caption --format txt``: one caption file per image (a/b/cat.jpg -> a/b/cat.txt), beside the images or
mirrored under --out DIR, resumable, atomic, with the failures in captions_errors.jsonl.

The tiny random captioner of tests/support/tiny_checkpoints.py and the mixed folder of tests/support/mixed_images.py
(every mode, subfolders, three bad files and a notes.txt); the CLI runs in process (tests/support/cli.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import vitkit
from tests.support.cli import run_main
from tests.support.mixed_images import BAD, GOOD, make_mixed_folder, noise
from tests.support.tiny_checkpoints import SENTENCES, save_captioner, tiny_captioner
from vitkit.captioning import CaptionTokenizer
from vitkit.captioning import folder as caption_folder_module
from vitkit.captioning.folder import ERRORS_NAME, CaptionOutput, caption_folder, output_format, txt_name
from vitkit.captioning.predictor import CaptionPipeline
from vitkit.cli.caption import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    tokenizer = CaptionTokenizer.train(SENTENCES, model="wordlevel")
    return save_captioner(tmp_path_factory.mktemp("ckpt") / "last.ckpt", tiny_captioner(tokenizer), tokenizer)


@pytest.fixture(scope="module")
def pipe(ckpt) -> CaptionPipeline:
    return vitkit.load(ckpt)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones included): relative POSIX path -> bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _small_folder(root: Path, names: list[str]) -> Path:
    root.mkdir(parents=True)
    for seed, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        noise(20 + seed, 24, seed).save(root / name)
    return root


# ----------------------------------------------------------------------------------------------- what is written
def test_txt_beside_the_images_holds_the_jsonl_captions_and_failures_are_recorded(ckpt, tmp_path, capfd):
    images = make_mixed_folder(tmp_path / "images")
    options = ("--ckpt", str(ckpt), "--beam", "2", "--batch-size", "4", "--workers", "0")
    jsonl = tmp_path / "c.jsonl"
    assert run_main(main, (str(images), *options, "--out", str(jsonl)), capfd).returncode == 3
    before = _files(images)

    proc = run_main(main, (str(images), *options, "--format", "txt"), capfd)
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr and all(f"failed: {f}:" in proc.stderr for f in BAD)
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith(f"captioned {len(GOOD)}, failed {len(BAD)}, skipped 0 (already done) in ")
    assert last.endswith(f"output: {images}")
    records = {r["file"]: r for r in _jsonl(jsonl)}
    for f in GOOD:  # the same decoding as the jsonl format: its caption, one newline-terminated UTF-8 line
        assert (images / txt_name(f)).read_bytes() == (records[f]["caption"] + "\n").encode("utf-8")
    assert (images / "sub" / "deep" / "c.txt").is_file()
    # the bad images get no .txt, their errors (the jsonl's reasons) go to captions_errors.jsonl, in listing order
    assert not any((images / txt_name(f)).exists() for f in BAD)
    assert _jsonl(images / ERRORS_NAME) == [{"file": f, "error": records[f]["error"]} for f in BAD]
    after = _files(images)  # nothing else was written (no temporary file left) and nothing was changed
    assert set(after) - set(before) == {txt_name(f) for f in GOOD} | {ERRORS_NAME}
    assert all(after[name] == data for name, data in before.items())  # the images and notes.txt untouched


def test_txt_out_dir_mirrors_the_nested_folders(ckpt, tmp_path, capfd):
    images = make_mixed_folder(tmp_path / "images")
    before = _files(images)
    out = tmp_path / "captions"  # created on the first write
    options = ("--ckpt", str(ckpt), "--beam", "1", "--workers", "0")
    proc = run_main(main, (str(images), *options, "--format", "txt", "--out", str(out)), capfd)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].endswith(f"output: {out}")
    assert _files(images) == before  # nothing written beside the images
    written = _files(out)
    assert set(written) == {txt_name(f) for f in GOOD} | {ERRORS_NAME}
    assert {"sub/B.txt", "sub/deep/c.txt", "A.txt"} <= set(written)
    assert run_main(main, (str(images), *options, "--out", str(tmp_path / "g.jsonl")), capfd).returncode == 3
    for r in _jsonl(tmp_path / "g.jsonl"):
        if "caption" in r:
            assert written[txt_name(r["file"])].decode("utf-8") == r["caption"] + "\n"
    assert [r["file"] for r in _jsonl(out / ERRORS_NAME)] == BAD


# ----------------------------------------------------------------------------------------------- resuming
def _stamps(root: Path, files: list[str]) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of each file's .txt: an atomic rewrite gives a new inode."""
    return {f: ((root / txt_name(f)).stat().st_ino, (root / txt_name(f)).stat().st_mtime_ns) for f in files}


def test_txt_resume_skips_existing_files_and_supersedes_error_records(pipe, ckpt, tmp_path, capfd):
    images = make_mixed_folder(tmp_path / "images")
    run = dict(fmt="txt", method="greedy", batch_size=4)
    first = caption_folder(pipe, images, images, **run)
    assert (first.done, first.failed, first.skipped) == (len(GOOD), len(BAD), 0)
    stamps, b_caption = _stamps(images, GOOD), (images / "sub" / "B.txt").read_text()

    # delete one .txt: the re-run (the CLI) recreates only that one, the failed images are retried and fail again
    (images / "sub" / "B.txt").unlink()
    proc = run_main(main, (str(images), "--ckpt", str(ckpt), "--beam", "1", "--batch-size", "4", "--workers", "0",
                           "--format", "txt"), capfd)
    assert proc.returncode == 3
    assert proc.stdout.strip().splitlines()[-1].startswith(f"captioned 1, failed {len(BAD)}, skipped {len(GOOD) - 1} ")
    assert (images / "sub" / "B.txt").read_text() == b_caption
    again = _stamps(images, GOOD)
    assert {f: again[f] for f in GOOD if f != "sub/B.PNG"} == {f: stamps[f] for f in GOOD if f != "sub/B.PNG"}
    assert [r["file"] for r in _jsonl(images / ERRORS_NAME)] == BAD  # one record each, not appended twice

    # a bad file fixed: its record goes, the others stay; all fixed: the errors file is removed
    noise(16, 16, 40).save(images / "empty.jpg", format="JPEG")
    fixed = caption_folder(pipe, images, images, **run)
    assert (fixed.done, fixed.failed, fixed.skipped) == (1, len(BAD) - 1, len(GOOD))
    assert (images / "empty.txt").is_file()
    assert [r["file"] for r in _jsonl(images / ERRORS_NAME)] == [f for f in BAD if f != "empty.jpg"]
    for seed, name in enumerate(BAD[1:]):
        noise(16, 16, 41 + seed).save(images / name, format="PNG")
    done = caption_folder(pipe, images, images, **run)
    assert (done.done, done.failed, done.failures) == (len(BAD) - 1, 0, [])
    assert not (images / ERRORS_NAME).exists()

    # --overwrite redoes every image; one that fails now loses its old .txt and gets an error record
    (images / "A.txt").write_text("stale\n")
    (images / "fake.png").write_text("not an image any more")
    redo = caption_folder(pipe, images, images, overwrite=True, **run)
    assert (redo.done, redo.failed, redo.skipped) == (len(GOOD) + len(BAD) - 1, 1, 0)
    assert (images / "A.txt").read_text() != "stale\n" and not (images / "fake.txt").exists()
    assert [r["file"] for r in _jsonl(images / ERRORS_NAME)] == ["fake.png"]


def test_error_records_of_unlisted_images_are_kept(pipe, tmp_path):
    images = _small_folder(tmp_path / "images", ["a.png", "sub/b.png"])
    (images / "sub" / "bad.png").write_bytes(b"")
    first = caption_folder(pipe, images, images, fmt="txt", method="greedy")
    assert (first.done, first.failed) == (2, 1)
    flat = caption_folder(pipe, images, images, fmt="txt", method="greedy", recursive=False)
    assert (flat.done, flat.failed, flat.skipped) == (0, 0, 1)
    assert [r["file"] for r in _jsonl(images / ERRORS_NAME)] == ["sub/bad.png"]  # not listed: left as it was


# ----------------------------------------------------------------------------------------------- usage errors
def test_two_images_sharing_a_txt_are_a_usage_error(pipe, ckpt, tmp_path, capfd):
    images = _small_folder(tmp_path / "images", ["cat.jpg", "cat.png", "dog.jpg", "sub/cat.jpg"])
    before = _files(images)
    proc = run_main(main, (str(images), "--ckpt", str(ckpt), "--format", "txt", "--workers", "0"), capfd)
    assert proc.returncode == 2
    assert "cat.jpg and cat.png would both be captioned into cat.txt" in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert _files(images) == before  # checked before anything is written
    with pytest.raises(ValueError, match=r"cat\.jpg and cat\.png"):
        caption_folder(pipe, images, tmp_path / "out", fmt="txt")
    assert not (tmp_path / "out").exists()
    # only txt shares names: jsonl captions the same folder
    proc = run_main(main, (str(images), "--ckpt", str(ckpt), "--out", str(tmp_path / "c.jsonl"), "--workers", "0"),
                    capfd)
    assert proc.returncode == 0 and len(_jsonl(tmp_path / "c.jsonl")) == 4


def test_txt_is_chosen_explicitly_and_out_is_a_folder(ckpt, tmp_path, capfd, monkeypatch):
    images = _small_folder(tmp_path / "images", ["a.png", "b.png"])
    monkeypatch.chdir(tmp_path)
    assert (output_format("c.txt"), output_format("c.CSV"), output_format("c", "txt")) == ("jsonl", "csv", "txt")
    with pytest.raises(ValueError, match="TxtOutput"):
        CaptionOutput(tmp_path / "c.jsonl", "txt")
    base = (str(images), "--ckpt", str(ckpt), "--workers", "0")
    assert run_main(main, (*base, "--out", "c.txt"), capfd).returncode == 0  # no --format: a JSON Lines file
    assert [r["file"] for r in _jsonl(tmp_path / "c.txt")] == ["a.png", "b.png"]

    (tmp_path / "file").write_text("x")
    for out, message in (("captions.csv", "looks like a file name"), ("file", "is a file")):
        proc = run_main(main, (*base, "--format", "txt", "--out", out), capfd)
        assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1
    # --attention into the image folder still fails (pictures would replace images) before anything is written
    proc = run_main(main, (*base, "--format", "txt", "--attention", str(images)), capfd)
    assert proc.returncode == 2 and "would overwrite the images" in proc.stderr
    assert not (images / "a.txt").exists()
    # the image folder named as --out is the default, not an overwrite error
    proc = run_main(main, (*base, "--format", "txt", "--out", str(images)), capfd)
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in images.iterdir()} == {"a.png", "b.png", "a.txt", "b.txt"}


# ----------------------------------------------------------------------------------------------- interruption
def test_an_interrupted_write_leaves_no_partial_txt_and_resumes(ckpt, tmp_path, capfd, monkeypatch):
    images = _small_folder(tmp_path / "images", ["a.png", "b.png", "c.png"])
    written: list[Path] = []
    real_atomic_write, real_replace = caption_folder_module.atomic_write, os.replace

    def spy(path, data, *args, **kwargs):
        written.append(Path(path))
        return real_atomic_write(path, data, *args, **kwargs)

    def killed_at_b(src, dst, *args, **kwargs):  # the run is killed after b.txt's bytes, before its rename
        if Path(dst).name == "b.txt":
            raise KeyboardInterrupt
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(caption_folder_module, "atomic_write", spy)
    monkeypatch.setattr(os, "replace", killed_at_b)
    args = (str(images), "--ckpt", str(ckpt), "--format", "txt", "--batch-size", "1", "--workers", "0")
    proc = run_main(main, args, capfd)
    assert proc.returncode == 130
    assert f"the .txt files under {images}" in proc.stderr and "run the same command again to resume" in proc.stderr
    assert written == [images / "a.txt", images / "b.txt"]  # every caption file goes through atomic_write
    assert sorted(p.name for p in images.iterdir()) == ["a.png", "a.txt", "b.png", "c.png"]  # no b.txt, no temp
    a = (images / "a.txt").read_text()
    assert a.endswith("\n") and a.count("\n") == 1

    monkeypatch.setattr(os, "replace", real_replace)
    proc = run_main(main, args, capfd)
    assert proc.returncode == 0
    assert proc.stdout.strip().splitlines()[-1].startswith("captioned 2, failed 0, skipped 1 ")
    assert (images / "a.txt").read_text() == a and (images / "c.txt").is_file()
