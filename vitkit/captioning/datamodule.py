"""Lightning DataModule for COCO-layout captioning data; it owns the caption tokenizer.

Training batches: ``(images, mask, tokens, image_ids[, objects])``; validation batches: the images, all their
references and their image ids. With ``bad_images: skip`` an unreadable training item is replaced by the next
readable one and a validation item is left out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from vitkit.captioning.object_tokens import WithObjects, mirror_objects
from vitkit.captioning.preprocess import CaptionPreprocess
from vitkit.captioning.tokenizer import CaptionTokenizer
from vitkit.captioning.tokenizer_lifecycle import TokenizerDataMixin, check_tokenizer_settings
from vitkit.data.annotations import Instances, check_instances
from vitkit.data.bad_images import SubstituteBad
from vitkit.data.coco_captions import CocoCaptions
from vitkit.data.collate import DropNone, pad_images
from vitkit.data.transforms import RandomShortestSideResize, normalize_steps
from vitkit.training.datamodule import CocoLayoutDataModule, data_errors

_LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def swap_left_right(caption: str) -> str:
    """The caption of the mirrored image: "left" <-> "right" (whole words, case kept)."""
    def swap(m: re.Match) -> str:
        word = m.group(0)
        new = "right" if word.lower() == "left" else "left"
        return new.capitalize() if word[0].isupper() else new

    return _LEFT_RIGHT.sub(swap, caption)


class _MirrorWithCaption(Dataset):
    """Training items ``(image, caption, image_id)`` mirrored left-right with probability ``p``, caption words
    swapped."""

    def __init__(self, dataset: Dataset, p: float) -> None:
        self.dataset, self.p = dataset, p

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple:
        image, caption, image_id, *objects = self.dataset[index]  # objects: [Objects | None] with object labels
        if self.p > 0 and float(torch.rand(())) < self.p:
            caption = (swap_left_right(caption) if isinstance(caption, str)
                       else tuple(swap_left_right(c) for c in caption))  # one reference, or captions_per_image
            image = image.flip(-1)  # (3, H, W) mirrored along W
            objects = [mirror_objects(o) for o in objects]
        return image, caption, image_id, *objects


class CaptionCollate:
    """Training collate: pad images, tokenise the captions, keep the image ids.

    Args:
        tokenizer: turns captions into ids.
        max_length: longest token sequence, BOS and EOS included (longer captions are truncated).
        pad_to_multiple: round the padded height and width up to a multiple of this.

    Returns (when called on B ``(image, caption, image_id)`` samples; ``caption`` one string, or a tuple of k):
        images (B, 3, H, W) zero-padded bottom/right; mask (B, H, W) bool, True = padding; tokens (B*k, T) long
        ``[BOS] caption [EOS] [PAD]...`` (an image's k captions in consecutive rows); image_ids (B ints); and,
        for samples with a 4th element, the B objects.
    """
    def __init__(self, tokenizer: CaptionTokenizer, max_length: int, pad_to_multiple: int = 1) -> None:
        self.tokenizer, self.max_length, self.pad_to_multiple = tokenizer, max_length, pad_to_multiple

    def __call__(self, batch: Sequence[tuple]) -> tuple:
        images, mask = pad_images([s[0] for s in batch], pad_to_multiple=self.pad_to_multiple)
        captions = [c for s in batch for c in ((s[1],) if isinstance(s[1], str) else s[1])]
        tokens = self.tokenizer.encode_batch(captions, max_length=self.max_length)  # (B*k, T)
        out = (images, mask, tokens, [int(s[2]) for s in batch])
        return (*out, [s[3] for s in batch]) if len(batch[0]) > 3 else out


def collate_caption_eval(batch: Sequence[tuple[Tensor, list[str], int]],
                         pad_to_multiple: int = 1) -> tuple[Tensor, Tensor, list[list[str]], list[int]]:
    """Evaluation collate: images (B, 3, H, W), mask (B, H, W) True = padding, references (B lists), image ids."""
    images, mask = pad_images([s[0] for s in batch], pad_to_multiple=pad_to_multiple)
    return images, mask, [list(s[1]) for s in batch], [int(s[2]) for s in batch]


class CaptionDataModule(TokenizerDataMixin, CocoLayoutDataModule):
    """COCO-layout caption data and its tokenizer.

    Args:
        batch_size: images per device and step.
        train_size: training short side in px, or a list of short sides drawn per image.
        val_size: validation short side in px.
        max_size: cap on the long side in px (training and validation).
        color_jitter: brightness/contrast/saturation jitter strength (0 = off; hue is never jittered).
        hflip_p: probability of mirroring a training image, "left"/"right" words swapped (0 = off).
        captions_per_image: references per training image and step (k).
        object_labels: also read ``instances_train2017.json`` beside the captions file for the object-token loss.
        tokenizer: path to a tokenizer.json to use; None = train one on the training captions.
        vocab_size: vocabulary size of a trained tokenizer (special tokens included).
        tokenizer_model: kind of trained tokenizer: "wordlevel", "bpe" or "wordpiece".
        max_length: longest token sequence, BOS and EOS included; linked into the captioner.
        **kwargs: settings of :class:`~vitkit.training.datamodule.CocoLayoutDataModule`.
    """
    kind = "captions"

    def __init__(
        self,
        *,
        batch_size: int = 32,
        train_size: int | list[int] = 224,
        val_size: int = 224,
        max_size: int = 384,
        color_jitter: float = 0.0,
        hflip_p: float = 0.0,
        captions_per_image: int = 1,
        object_labels: bool = False,
        tokenizer: str | None = None,
        vocab_size: int = 1000,
        tokenizer_model: str = "wordlevel",
        max_length: int = 32,
        **kwargs: Any,
    ) -> None:
        check_tokenizer_settings(tokenizer, tokenizer_model, max_length)
        if captions_per_image < 1:
            raise ValueError(f"data.captions_per_image must be >= 1, got {captions_per_image}")
        if not 0.0 <= hflip_p <= 1.0:
            raise ValueError(f"data.hflip_p must be in [0, 1], got {hflip_p}")
        sizes = [train_size] if isinstance(train_size, int) else list(train_size)
        if not sizes or max([*sizes, val_size]) >= max_size:
            raise ValueError(f"data.max_size ({max_size}) must exceed every train_size ({sizes}) and val_size "
                             f"({val_size})")
        super().__init__(**kwargs)
        self.train_sizes = sizes
        self._tokenizer: CaptionTokenizer | None = None
        self._datasets: dict[str, Any] = {}
        self.train_set = self.val_set = None
        self._instances: Instances | None = None

    # ------------------------------------------------------------------------------------------- datasets
    def _dataset(self, split: str):
        """The split's :class:`CocoCaptions` (read once; transforms are set by :meth:`setup`)."""
        if split not in self._datasets:
            with data_errors():  # a malformed file or a missing image (bad_images: fail): one paragraph, no traceback
                self._datasets[split] = CocoCaptions(self.root, split, train=split == "train",
                                                     bad_images=self.hparams.bad_images,
                                                     captions_per_item=self.hparams.captions_per_image)
        return self._datasets[split]

    def tokenizer_texts(self) -> Iterable[str]:
        """Every training caption (what a tokenizer is trained on when ``tokenizer`` is None)."""
        return [c for refs in self._dataset("train").references.values() for c in refs]

    @property
    def instances(self) -> Instances | None:
        """The training split's checked instances file (``object_labels``), read at first use; else None."""
        if self.hparams.object_labels and self._instances is None:
            path = self._dataset("train").ann_file.parent / "instances_train2017.json"
            hint = (" (data.object_labels reads the COCO instances file beside the captions file; set it false for a "
                    "captions-only dataset)")
            with data_errors():
                if not path.is_file():
                    raise FileNotFoundError(f"{path}: no such file{hint}")
                self._instances = check_instances(path, hint=hint)
        return self._instances

    @property
    def num_object_classes(self) -> int | None:
        """The instances file's category count (``object_labels``), linked into ``model.object_classes``."""
        return len(self.instances.categories) if self.instances is not None else None

    def train_references(self) -> dict[int, list[str]]:
        """Every training image's reference captions, by image id (the SCST reward's corpus)."""
        return {int(i): list(refs) for i, refs in self._dataset("train").references.items()}

    # ------------------------------------------------------------------------------------------ datasets
    def _transforms(self, train: bool) -> v2.Compose:
        """Training: multi-scale resize, optional colour jitter, normalise. Validation: inference's preprocessing."""
        hp = self.hparams
        if not train:
            return CaptionPreprocess(hp.val_size, hp.max_size).transform
        steps: list[v2.Transform] = [RandomShortestSideResize(self.train_sizes, max_size=hp.max_size)]
        if hp.color_jitter > 0:
            steps.append(v2.ColorJitter(brightness=hp.color_jitter, contrast=hp.color_jitter,
                                        saturation=hp.color_jitter))
        steps += normalize_steps()
        return v2.Compose(steps)

    def setup(self, stage: str | None = None) -> None:
        self._share_rank0_tokenizer()
        if stage in (None, "fit") and self.train_set is None:
            train = self._dataset("train")
            train.transforms = self._transforms(train=True)
            # an unreadable image is replaced by the next readable one (batches keep their size, DDP ranks their steps)
            train = SubstituteBad(train) if self.hparams.bad_images == "skip" else train
            if self.instances is not None:
                train = WithObjects(train, self.instances)
            self.train_set = _MirrorWithCaption(train, self.hparams.hflip_p)
        if self.val_set is None:
            self.val_set = self._dataset("val")
            self.val_set.transforms = self._transforms(train=False)

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        collate = CaptionCollate(self.tokenizer, hp.max_length, hp.pad_to_multiple)
        return self._loader(self.train_set, collate, train=True)

    def val_dataloader(self) -> DataLoader:
        collate = DropNone(partial(collate_caption_eval, pad_to_multiple=self.hparams.pad_to_multiple))
        return self._loader(self.val_set, collate, train=False)
