"""Fetch, here, the wheels that ``benchmarks/gpu_check.py --wheels DIR`` installs on the GPU machine.

The device image (Python 3.12, x86-64; torch, torchvision, timm, lightning, transformers, pytest, scipy, pyyaml,
tokenizers, safetensors, rich, matplotlib) lacks what vitkit and the cuda test subset import besides:

- ``jsonargparse`` (+ ``docstring-parser``, ``typeshed-client``, ``importlib-resources``): ``import vitkit`` and
  the config-built models (``vitkit.utils.config``, ``tests/support/configs.py``);
- ``pycocotools`` and ``faster-coco-eval``: COCO AP in the bf16 AP guard (``tests/kernels/test_precision.py``);
- ``pycocoevalcap``: imported by the caption Lightning module. Its wheel is ~60 MB, almost all METEOR's paraphrase
  table (``.gz``; Java jars are dropped too where present), near the 64 MiB the device tool carries, so it is repacked
  without them (~0.1 MB): the Python scorers (BLEU, ROUGE-L, CIDEr-D) work; METEOR needs Java and is unused here.

Usage (repository root; ``.whl/`` is git-ignored)::

    python -m benchmarks.gpu_wheels .whl
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

# name==version as pinned by this project's environment; the device's Python is CPython 3.12 on manylinux x86-64.
WHEELS = ["jsonargparse==4.53.0", "docstring-parser==0.18.0", "typeshed-client==2.15.0", "importlib-resources==6.5.2",
          "pycocotools==2.0.11", "faster-coco-eval==1.8.0", "pycocoevalcap==1.2"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]
SLIM = "pycocoevalcap"  # repacked without its Java jars


def download(dest: Path, python_version: str = "3.12") -> None:
    """``pip download`` each of :data:`WHEELS` (no dependencies: each is named) for the device's platform."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
           python_version, "--implementation", "cp", "-d", str(dest)]
    for plat in PLATFORMS:
        cmd += ["--platform", plat]
    subprocess.run(cmd + WHEELS, check=True)


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def slim_wheel(path: Path, drop_suffixes: tuple[str, ...] = (".jar", ".gz")) -> Path:
    """Rewrite the wheel at ``path`` in place without its files ending in ``drop_suffixes`` (RECORD rewritten)."""
    with zipfile.ZipFile(path) as src:
        entries = [(i, src.read(i)) for i in src.infolist() if not i.filename.endswith(drop_suffixes)]
    record_name = next(i.filename for i, _ in entries if i.filename.endswith(".dist-info/RECORD"))
    lines = [_record_line(i.filename, data) for i, data in entries if i.filename != record_name]
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for info, data in entries:
            if info.filename == record_name:
                data = ("\n".join([*lines, f"{record_name},,"]) + "\n").encode()
            dst.writestr(info, data)
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dest", type=Path, help="folder for the wheels (e.g. .whl, git-ignored)")
    a = p.parse_args(argv)
    a.dest.mkdir(parents=True, exist_ok=True)
    download(a.dest)
    for whl in a.dest.glob(f"{SLIM}-*.whl"):
        slim_wheel(whl)
    total = sum(f.stat().st_size for f in a.dest.glob("*.whl"))
    print(f"{len(list(a.dest.glob('*.whl')))} wheels, {total / 2**20:.1f} MiB in {a.dest}")


if __name__ == "__main__":
    main()
