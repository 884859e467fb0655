"""What the detection and caption datamodules share: the COCO 2017 folder layout under a root (generated shapes
data on request), its checks, and data errors turned into one-paragraph :class:`~vitkit.train.guards.ConfigError`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L

from vitkit.data.bad_images import check_policy
from vitkit.data.images import ImageReadError
from vitkit.data.shapes import ensure_shapes
from vitkit.train.guards import ConfigError

_LAYOUT = """expected layout under {{root}}:
  {{root}}/train2017/                          training images
  {{root}}/val2017/                            validation images
  {{root}}/annotations/{kind}_train2017.json
  {{root}}/annotations/{kind}_val2017.json
COCO 2017 comes from https://cocodataset.org (2017 Train/Val images + annotations); any dataset in this
layout works. For the generated demo data run: python tools/make_shapes.py {{root}}"""


@contextmanager
def data_errors() -> Iterator[None]:
    """Turn what reading the data raises (a malformed annotation file, train and val categories that differ, a
    missing image with ``bad_images: fail``) into a :class:`ConfigError` naming ``data.root`` and the fix, which the
    CLIs print as one paragraph (exit status 2) instead of a traceback."""
    try:
        yield
    except ConfigError:
        raise
    except ImageReadError as err:
        raise ConfigError(f"data.root: {str(err).rstrip('.')}. Fix: restore the file, or set data.bad_images: skip "
                          "to leave missing and unreadable images out (each is reported by path)") from err
    except (FileNotFoundError, NotADirectoryError, ValueError) as err:
        raise ConfigError(f"data.root: {str(err).rstrip('.')}. Fix: correct the file and entry named here, or point "
                          "data.root at another dataset in the COCO 2017 layout") from err


class CocoLayoutDataModule(L.LightningDataModule):
    """What the detection and caption datamodules share: a COCO 2017 layout under ``root`` (generated shapes data
    on request) with ``annotations/{kind}_{split}2017.json`` files, and the ``bad_images`` policy.

    Subclasses set :attr:`kind` ("instances" or "captions") and call :meth:`_prepare_root` from ``__init__``
    (after ``save_hyperparameters``; their signatures stay explicit for LightningCLI).
    """

    kind = "instances"

    @property
    def layout(self) -> str:
        """The expected-layout paragraph for error messages."""
        return _LAYOUT.format(kind=self.kind).format(root=self.root)

    def _prepare_root(self, root: str, generate_shapes: bool, shapes_train: int, shapes_val: int, shapes_size: int,
                      shapes_seed: int, bad_images: str) -> None:
        """Check ``bad_images``, generate the shapes set when asked, and require both annotation files and both
        image folders (so a missing folder is named at construction, not when ``setup`` reads it)."""

        check_policy(bad_images, "data.bad_images")
        self.root = Path(root)
        if generate_shapes:

            ensure_shapes(self.root, num_train=shapes_train, num_val=shapes_val, image_size=shapes_size,
                          seed=shapes_seed)
        for split in ("train", "val"):
            ann = self.annotation_file(split)
            if not ann.is_file():
                raise FileNotFoundError(f"data.root: missing {ann}\n" + self.layout)
        for split in ("train", "val"):
            folder = self.root / f"{split}2017"
            if not folder.is_dir():
                raise FileNotFoundError(
                    f"data.root: missing the image folder {folder} (the annotation files are there). Fix: put the "
                    f"{split} images in {folder}, or point data.root at the dataset root that holds it\n" + self.layout)

    def annotation_file(self, split: str) -> Path:
        return self.root / "annotations" / f"{self.kind}_{split}2017.json"

    @property
    def val_annotation_file(self) -> str:
        return str(self.annotation_file("val"))


