"""What the detection and caption datamodules share: the COCO 2017 folder layout under a root (generated shapes
data on request), its checks, and data errors turned into one-paragraph :class:`~vitkit.training.guards.ConfigError`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler

from vitkit.data.bad_images import SkippingDataLoader, check_policy, find_wrapped
from vitkit.data.images import ImageReadError
from vitkit.data.sampling import GroupedBatchSampler, aspect_ratio_groups
from vitkit.data.shapes import NotAShapesFolder, ensure_shapes
from vitkit.training.guards import ConfigError

_LAYOUT = """expected layout under {{root}}:
  {{root}}/train2017/                          training images
  {{root}}/val2017/                            validation images
  {{root}}/annotations/{kind}_train2017.json
  {{root}}/annotations/{kind}_val2017.json
COCO 2017 comes from https://cocodataset.org (2017 Train/Val images + annotations); any dataset in this
layout works. For the generated demo data run: python tools/make_shapes.py {{root}}"""


@contextmanager
def data_errors() -> Iterator[None]:
    """Turn data errors (malformed annotations, differing train/val categories, a missing image with
    ``bad_images: fail``) into a :class:`ConfigError` naming ``data.root`` and the fix."""
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
    """Base datamodule: a COCO 2017 layout under ``root`` with ``annotations/{kind}_{split}2017.json`` files.

    Subclasses set :attr:`kind` ("instances" or "captions"), take their own arguments (``batch_size`` first) and pass
    the rest on with ``**kwargs``.

    Args:
        generate_shapes: generate the synthetic shapes dataset into ``root`` when it has no annotations.
        shapes_train, shapes_val, shapes_size, shapes_seed: generator settings (with ``generate_shapes``).
        val_batch_size: validation batch size (default: ``batch_size``).
        pad_to_multiple: pad batches to a multiple of this (e.g. the patch size).
        aspect_ratio_groups: bins per doubling of width / height for batching alike aspect ratios
            (:mod:`vitkit.data.sampling`); validation batches are grouped in file order. 0 = off.
        bad_images: "skip" (a missing or undecodable image is left out with a warning, and counted) or "fail"
            (stop at the first one: missing files at setup, unreadable ones when read).

    Raises:
        FileNotFoundError: an annotation file or an image folder is missing (the message shows the layout)."""

    kind = "instances"

    def __init__(
        self,
        root: str = "data/coco",
        generate_shapes: bool = False,
        shapes_train: int = 600,
        shapes_val: int = 100,
        shapes_size: int = 192,
        shapes_seed: int = 0,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        pad_to_multiple: int = 1,
        bad_images: str = "skip",
        aspect_ratio_groups: int = 0,
    ) -> None:
        super().__init__()
        # Lightning reads every __init__ frame up the call chain: this records the subclass's arguments as well
        self.save_hyperparameters()
        check_policy(bad_images, "data.bad_images")
        if aspect_ratio_groups < 0:
            raise ConfigError(f"data.aspect_ratio_groups must be >= 0 (bins per doubling of the aspect ratio; 0 = "
                              f"plain random batches), got {aspect_ratio_groups}")
        self.root = Path(root)
        if generate_shapes:
            try:
                ensure_shapes(self.root, num_train=shapes_train, num_val=shapes_val, image_size=shapes_size,
                              seed=shapes_seed)
            except NotAShapesFolder as err:
                raise ConfigError(f"data.root: {err}. Fix: add the annotation files (missing: "
                                  f"{self.annotation_file('train')}), or set data.root to a new folder for the "
                                  f"generated shapes set\n" + self.layout) from err
        self._check_layout()

    @property
    def layout(self) -> str:
        """The expected-layout paragraph for error messages."""
        return _LAYOUT.format(kind=self.kind).format(root=self.root)

    def _check_layout(self) -> None:
        """Require both annotation files and both image folders (so a missing folder is named at construction, not
        when ``setup`` reads it)."""
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

    def _loader(self, dataset: Dataset, collate_fn: Callable, train: bool) -> DataLoader:
        """A loader that leaves out None items; training: ``batch_size``, shuffled; validation: ``val_batch_size``,
        in order."""
        hp = self.hparams
        batch_size = hp.batch_size if train else hp.val_batch_size or hp.batch_size
        settings = dict(num_workers=hp.num_workers, collate_fn=collate_fn, pin_memory=torch.cuda.is_available(),
                        persistent_workers=hp.num_workers > 0)
        if not hp.aspect_ratio_groups:
            return SkippingDataLoader(dataset, batch_size=batch_size, shuffle=train, **settings)
        sized = find_wrapped(dataset, lambda d: hasattr(d, "aspect_ratios"))
        if sized is None:
            raise ConfigError(f"data.aspect_ratio_groups needs a dataset that knows its images' sizes; "
                              f"{type(dataset).__name__} does not: set data.aspect_ratio_groups 0")
        groups = aspect_ratio_groups(sized.aspect_ratios(), hp.aspect_ratio_groups)
        sampler = RandomSampler(dataset) if train else SequentialSampler(dataset)
        return SkippingDataLoader(dataset, batch_sampler=GroupedBatchSampler(sampler, batch_size, False, groups),
                                  **settings)

    def annotation_file(self, split: str) -> Path:
        return self.root / "annotations" / f"{self.kind}_{split}2017.json"

    @property
    def val_annotation_file(self) -> str:
        return str(self.annotation_file("val"))


