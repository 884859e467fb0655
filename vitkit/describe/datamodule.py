"""Lightning DataModule of describe: COCO-layout detection data whose annotations may carry a ``caption``.

Targets also hold ``ann_ids`` (n,) int64, ``captions`` (n ``str | None``), ``has_caption`` (n,) bool and, from
the collate, ``caption_tokens`` (n, T) long ``[BOS] phrase [EOS] [PAD]...``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

from torchvision.transforms import v2

from vitkit.captioning.datamodule import swap_left_right
from vitkit.captioning.tokenizer import CaptionTokenizer
from vitkit.captioning.tokenizer_lifecycle import TokenizerDataMixin, check_tokenizer_settings
from vitkit.data.collate import DropNone
from vitkit.describe.regions import (
    RegionCaptionCollate,
    RegionCaptionTransform,
    RegionIndex,
    RegionReferences,
    read_region_references,
)
from vitkit.detection.datamodule import CocoDataModule
from vitkit.training.datamodule import data_errors


def set_hflip_p(transform: Any, p: float) -> None:
    """Set the probability of the one ``v2.RandomHorizontalFlip`` in a v2 pipeline; RuntimeError if none or several."""
    stack, flips = [transform], []
    while stack:
        step = stack.pop()
        if isinstance(step, v2.RandomHorizontalFlip):
            flips.append(step)
        stack += list(getattr(step, "transforms", None) or [])
    if len(flips) != 1:
        raise RuntimeError(f"expected one RandomHorizontalFlip in the training transforms, found {len(flips)}")
    flips[0].p = p


class DescribeDataModule(TokenizerDataMixin, CocoDataModule):
    """Describe data: detection targets whose boxes carry their phrases, and the caption tokenizer.

    Args:
        hflip_p: probability of mirroring a training image (phrases unchanged); :meth:`setup` warns when > 0 and
            training phrases say "left" or "right".
        tokenizer: path to a tokenizer.json to use; None = train one on the training file's phrases.
        vocab_size: vocabulary size of a trained tokenizer (special tokens included).
        tokenizer_model: kind of trained tokenizer: "wordlevel", "bpe" or "wordpiece".
        max_length: longest token sequence of a phrase, BOS and EOS included; longer ones lose their last words.
        **kwargs: the settings of :class:`~vitkit.detection.datamodule.CocoDataModule`.

    Raises:
        ValueError: a setting out of range, or an unknown ``tokenizer_model``.
        FileNotFoundError: ``tokenizer`` names no file, or the data layout is incomplete.
    """

    def __init__(
        self,
        *,
        hflip_p: float = 0.5,
        tokenizer: str | None = None,
        vocab_size: int = 1000,
        tokenizer_model: str = "wordlevel",
        max_length: int = 16,
        **kwargs: Any,
    ) -> None:
        check_tokenizer_settings(tokenizer, tokenizer_model, max_length)
        if not 0.0 <= hflip_p <= 1.0:
            raise ValueError(f"data.hflip_p must be in [0, 1], got {hflip_p}")
        super().__init__(**kwargs)
        self._tokenizer: CaptionTokenizer | None = None
        self._regions: dict[str, RegionIndex] = {}

    def regions(self, split: str) -> RegionIndex:
        """The split's :class:`~vitkit.describe.regions.RegionIndex` (its file read once)."""
        if split not in self._regions:
            with data_errors():  # a malformed file: one paragraph naming the annotation and the field, no traceback
                self._regions[split] = RegionIndex(self.annotation_file(split), hint=self.layout)
        return self._regions[split]

    def tokenizer_texts(self) -> Iterable[str]:
        """The training file's phrases (what a tokenizer is trained on when ``tokenizer`` is None)."""
        return self.regions("train").phrases()

    # ------------------------------------------------------------------------------------------ datasets
    def setup(self, stage: str | None = None) -> None:
        self._share_rank0_tokenizer()
        super().setup(stage)
        if self.train_set is not None and not isinstance(self.train_set.transforms, RegionCaptionTransform):
            set_hflip_p(self.train_set.transforms, self.hparams.hflip_p)
            self.train_set.transforms = RegionCaptionTransform(self.train_set.transforms, self.regions("train"))
            self._warn_left_right()
        if self.val_set is not None and not isinstance(self.val_set.transforms, RegionCaptionTransform):
            self.val_set.transforms = RegionCaptionTransform(self.val_set.transforms, self.regions("val"))

    def _warn_left_right(self) -> None:
        """Warn when mirrored training images would make phrases that say "left" or "right" wrong."""
        if self.hparams.hflip_p == 0:
            return
        phrases = self.regions("train").phrases()
        sided = [c for c in phrases if swap_left_right(c) != c]
        if sided:
            warnings.warn(f"data.hflip_p is {self.hparams.hflip_p} but {len(sided)} of the {len(phrases)} training "
                          f"captions say 'left' or 'right' (e.g. {sided[0][:80]!r}); a mirrored "
                          "image keeps its captions, which then say the wrong side. Fix: set data.hflip_p: 0",
                          UserWarning, stacklevel=2)

    @property
    def _collate(self) -> DropNone:
        hp = self.hparams
        return DropNone(RegionCaptionCollate(self.tokenizer, hp.max_length, hp.pad_to_multiple))

    def val_references(self) -> dict[int, RegionReferences]:
        """Image id -> :class:`~vitkit.describe.regions.RegionReferences` of each validation image, in order."""
        if self.val_set is None:  # the detection datamodule's setup: no DDP exchange, so any one rank may call this
            super().setup("validate")
        with data_errors():
            return read_region_references(self.val_annotation_file, self.val_set.ids, hint=self.layout)
