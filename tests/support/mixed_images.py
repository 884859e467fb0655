"""A folder of mixed real-world image files for the folder tools' tests (tools/caption.py, tools/detect.py).

Every mode Pillow decodes (L, LA, P with transparency, RGBA, CMYK, I;16, 1), an EXIF-rotated JPEG, an animated
GIF, odd sizes (1 x 1, 40 x 900, 1200 x 800), upper-case extensions, subfolders; plus a truncated PNG, an empty
JPEG, a text file with an image extension (the BAD files) and a .txt file that is not listed at all.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

GOOD = ["A.JPG", "anim.gif", "bits.bmp", "cmyk.tif", "gray.png", "gray16.png", "la.png", "large.jpg",
        "palette.png", "pic.webp", "rgba.png", "rotated.jpg", "sub/B.PNG", "sub/deep/c.Jpeg", "thin.png", "tiny.png"]
BAD = ["empty.jpg", "fake.png", "truncated.png"]


def noise(h: int, w: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def exif_rotated(path: Path) -> None:
    """A 48 x 24 (w x h) JPEG whose EXIF orientation 6 says "rotate 90 degrees clockwise to view"."""
    exif = Image.Exif()
    exif[0x0112] = 6
    noise(24, 48, 7).save(path, exif=exif, quality=95)


def make_mixed_folder(root: Path) -> Path:
    (root / "sub" / "deep").mkdir(parents=True)
    noise(20, 30, 1).save(root / "A.JPG")
    noise(18, 22, 2).save(root / "sub" / "B.PNG")
    noise(40, 16, 3).save(root / "sub" / "deep" / "c.Jpeg")
    noise(30, 30, 4).save(root / "pic.webp")
    noise(800, 1200, 5).save(root / "large.jpg")  # 1200 x 800
    noise(1, 1, 6).save(root / "tiny.png")
    noise(900, 40, 8).save(root / "thin.png")  # 40 x 900
    exif_rotated(root / "rotated.jpg")
    noise(20, 20, 9).convert("L").save(root / "gray.png")
    noise(20, 20, 10).convert("LA").save(root / "la.png")
    noise(20, 20, 11).convert("P").save(root / "palette.png", transparency=0)
    noise(20, 20, 12).convert("RGBA").save(root / "rgba.png")
    noise(20, 20, 13).convert("CMYK").save(root / "cmyk.tif")
    Image.fromarray(np.random.default_rng(14).integers(0, 65536, (20, 20), dtype=np.uint16)).save(root / "gray16.png")
    noise(20, 20, 15).convert("1").save(root / "bits.bmp")
    frames = [noise(20, 20, 16).convert("P"), noise(20, 20, 17).convert("P")]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    noise(64, 64, 18).save(root / "truncated.png")
    data = (root / "truncated.png").read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "empty.jpg").write_bytes(b"")
    (root / "fake.png").write_text("plain text with an image extension")
    (root / "notes.txt").write_text("not an image")
    return root
