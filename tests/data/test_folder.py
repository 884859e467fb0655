"""Image folders: listing order and recursion, decoding every mode to RGB, EXIF, bad files as records, collation."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from vitkit.data.folder import ImageFolder, collate_folder, list_images, overwrite_error
from vitkit.data.images import ImageReadError, load_rgb

GOOD = ["B.PNG", "a.JPG", "anim.gif", "bits.bmp", "cmyk.TIFF", "float.tif", "gray.png", "gray16.png", "la.png",
        "palette.png", "rgba.png", "rotated.jpg", "sub/c.png", "sub/deeper/d.Jpeg"]
BAD = ["corrupt.jpg", "fake.png", "truncated.png"]


def _exif_rotated(path: Path) -> None:
    """A 40 x 20 (w x h) JPEG whose EXIF orientation 6 says "rotate 90 degrees clockwise to view"."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 20), (0, 128, 0)).save(path, exif=exif)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    (root / "sub" / "deeper").mkdir(parents=True)
    Image.new("RGB", (30, 20), (10, 20, 30)).save(root / "B.PNG")
    Image.new("RGB", (16, 24), (200, 100, 50)).save(root / "a.JPG", quality=95)
    Image.new("RGB", (12, 10), (1, 2, 3)).save(root / "sub" / "c.png")
    Image.new("RGB", (8, 8), (4, 5, 6)).save(root / "sub" / "deeper" / "d.Jpeg")
    (root / "notes.txt").write_text("not an image")
    (root / "fake.png").write_text("plain text with an image extension")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG" * 4)
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "truncated.png")
    data = (root / "truncated.png").read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    _exif_rotated(root / "rotated.jpg")

    Image.new("L", (6, 4), 100).save(root / "gray.png")
    la = Image.new("LA", (6, 4), (100, 255))
    la.paste((100, 0), (0, 0, 3, 4))  # left half fully transparent
    la.save(root / "la.png")
    palette = Image.new("P", (6, 4), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # index 0 black, 1 red
    palette.paste(0, (0, 0, 3, 4))
    palette.save(root / "palette.png", transparency=0)  # index 0 is transparent
    rgba = Image.new("RGBA", (6, 4), (0, 0, 255, 255))
    rgba.paste((255, 0, 0, 0), (0, 0, 3, 4))
    rgba.save(root / "rgba.png")
    Image.new("CMYK", (6, 4), (0, 255, 255, 0)).save(root / "cmyk.TIFF")
    sixteen = np.full((4, 6), 65535, dtype=np.uint16)
    sixteen[:, :3] = 32768
    Image.fromarray(sixteen).save(root / "gray16.png")
    Image.fromarray(np.full((4, 6), 0.5, dtype=np.float32)).save(root / "float.tif")
    bits = Image.new("1", (6, 4), 1)
    bits.paste(0, (0, 0, 3, 4))
    bits.save(root / "bits.bmp")
    frames = [Image.new("P", (6, 4), 0), Image.new("P", (6, 4), 1)]
    for frame in frames:
        frame.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # frame 0 red, frame 1 blue
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    return root


def _pixels(path: Path) -> np.ndarray:
    img = load_rgb(path)
    assert img.mode == "RGB"
    return np.asarray(img)  # (H, W, 3)


def test_list_images_order_case_and_recursion(folder: Path) -> None:
    files = list_images(folder)
    assert [p.as_posix() for p in files] == sorted(GOOD + BAD)
    assert all(not p.is_absolute() for p in files)
    top = [p.as_posix() for p in list_images(folder, recursive=False)]
    assert top == sorted(f for f in GOOD + BAD if "/" not in f)
    assert list_images(folder / "sub") == [Path("c.png"), Path("deeper/d.Jpeg")]


def test_list_images_errors(folder: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"image folder not found: .*missing"):
        list_images(folder / "missing")
    with pytest.raises(NotADirectoryError, match=r"not a folder: .*notes\.txt"):
        list_images(folder / "notes.txt")


def test_modes_become_sensible_rgb(folder: Path) -> None:
    assert (_pixels(folder / "gray.png") == 100).all()
    la = _pixels(folder / "la.png")
    assert (la[:, :3] == 255).all() and (la[:, 3:] == 100).all()  # transparent over white
    palette = _pixels(folder / "palette.png")
    assert (palette[:, :3] == 255).all() and (palette[:, 3:] == [255, 0, 0]).all()
    rgba = _pixels(folder / "rgba.png")
    assert (rgba[:, :3] == 255).all() and (rgba[:, 3:] == [0, 0, 255]).all()
    assert (_pixels(folder / "cmyk.TIFF") == [255, 0, 0]).all()
    sixteen = _pixels(folder / "gray16.png")
    assert (sixteen[:, 3:] == 255).all()  # 65535
    assert (sixteen[:, :3] == 128).all()  # 32768, not clipped to 255
    assert (_pixels(folder / "float.tif") == 128).all()  # 0.5 in [0, 1]
    bits = _pixels(folder / "bits.bmp")
    assert (bits[:, :3] == 0).all() and (bits[:, 3:] == 255).all()
    assert (_pixels(folder / "anim.gif") == [255, 0, 0]).all()  # the first frame


def test_exif_orientation_is_applied(folder: Path) -> None:
    with Image.open(folder / "rotated.jpg") as raw:
        assert raw.size == (40, 20)
    img = load_rgb(folder / "rotated.jpg")
    assert img.size == (20, 40)  # (w, h): upright, as a viewer shows it


def test_bad_files_raise_image_read_error(folder: Path) -> None:
    for name in (*BAD, "missing.png"):
        with pytest.raises(ImageReadError) as info:
            load_rgb(folder / name)
        assert info.value.path == folder / name
        assert name in str(info.value) and info.value.reason
    with pytest.raises(ImageReadError, match="truncated"):
        load_rgb(folder / "truncated.png")
    with pytest.raises(ImageReadError, match="cannot identify image file"):
        load_rgb(folder / "fake.png")
    err = ImageReadError("x.png", "broken")
    assert isinstance(err, OSError)
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.path, copy.reason, str(copy)) == (err.path, err.reason, str(err))


def test_image_folder_records_and_collate(folder: Path) -> None:
    ds = ImageFolder(folder)
    assert len(ds) == len(GOOD) + len(BAD)
    records = {r["file"]: r for r in (ds[i] for i in range(len(ds)))}
    for name in BAD:
        assert records[name]["image"] is None and records[name]["size"] is None and records[name]["error"]
    for name in GOOD:
        rec = records[name]
        assert rec["error"] is None
        assert rec["image"].dtype == torch.uint8 and rec["image"].shape == (3, *rec["size"])
    assert records["rotated.jpg"]["size"] == (40, 20)  # (h, w) after the EXIF rotation

    loader = DataLoader(ds, batch_size=5, collate_fn=collate_folder)
    seen_good, seen_bad = [], []
    for good, errors in loader:
        seen_bad += [e["file"] for e in errors]
        if good is None:
            continue
        seen_good += good["files"]
        b, c, h, w = good["images"].shape
        assert c == 3 and good["mask"].shape == (b, h, w) and len(good["sizes"]) == b
        for i, (hi, wi) in enumerate(good["sizes"]):
            assert not good["mask"][i, :hi, :wi].any() and good["mask"][i].sum() == h * w - hi * wi
    assert sorted(seen_good) == sorted(GOOD) and sorted(seen_bad) == sorted(BAD)

    good, errors = collate_folder([records[name] for name in BAD])
    assert good is None and [e["file"] for e in errors] == BAD
    good, _ = collate_folder([records["B.PNG"], records["sub/c.png"]], pad_to_multiple=16)
    assert good["images"].shape == (2, 3, 32, 32)


def test_transform_failure_is_a_record(folder: Path) -> None:
    def small_only(img: Image.Image) -> torch.Tensor:
        if img.width > 20:
            raise ValueError("too wide")
        return torch.zeros(3, img.height, img.width)

    ds = ImageFolder(folder / "sub", transform=small_only, recursive=False)
    assert [ds[i]["error"] for i in range(len(ds))] == [None]
    ds = ImageFolder(folder, transform=small_only)
    record = ds[ds.files.index(Path("B.PNG"))]
    assert record["image"] is None and record["error"] == "transform failed: ValueError: too wide"


def test_overwrite_error_names_the_option_when_pictures_would_land_on_the_images(tmp_path):
    (tmp_path / "sub").mkdir()
    assert overwrite_error("--draw", tmp_path / "sub" / "..", tmp_path) == (
        f"--draw {tmp_path / 'sub' / '..'} is the image folder: the pictures would overwrite the images")
    assert overwrite_error("--draw", tmp_path / "sub", tmp_path) is None
    assert overwrite_error("--attention", None, tmp_path) is None
