"""Batches of images with similar shapes: less padding, so less compute per batch.

A batch is padded to its largest height and its largest width (:func:`vitkit.data.collate.pad_images`). Images of
mixed orientation pad each other to near squares: on the shapes set (aspect ratios 0.73-1.37, short side 192) a
random batch of 8 holds 1.40 padded pixels per real one. :class:`GroupedBatchSampler` fills each batch from one
aspect-ratio group (torchvision's detection references and detectron2 do the same), 1.12 with
:func:`aspect_ratio_groups` at factor 3. The padded tokens cost the conv stem, the encoder's attention and its MLPs as
much as real ones.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Sequence

from torch.utils.data import BatchSampler, Sampler


def aspect_ratio_groups(ratios: Sequence[float], factor: int) -> list[int]:
    """The group of each width / height ratio: its bin among ``2 ** k / factor`` for k in ``-factor..factor``
    (torchvision's ``--aspect-ratio-group-factor``: 3 gives 8 groups, bins 2^(1/3) wide, beyond 1:2 and 2:1 the
    outer two).

    Args:
        ratios: width / height of every item (> 0).
        factor: bins per doubling of the ratio, >= 1.

    Returns:
        A group id per item, in ``0..2 * factor + 1``.
    """
    if factor < 1:
        raise ValueError(f"aspect_ratio_groups: factor must be >= 1, got {factor}")
    edges = [2.0 ** (k / factor) for k in range(-factor, factor + 1)]
    bad = [i for i, r in enumerate(ratios) if not (math.isfinite(r) and r > 0)]
    if bad:
        raise ValueError(f"aspect_ratio_groups: item {bad[0]} has aspect ratio {ratios[bad[0]]!r}; every width / "
                         "height ratio must be a positive number")
    return [bisect.bisect_right(edges, r) for r in ratios]


class GroupedBatchSampler(BatchSampler):
    """Batches whose items share a group (e.g. an aspect-ratio bin), in the order ``sampler`` yields them.

    Each group fills its own batch; a batch is yielded as soon as it is full. The items left at the end of an epoch
    (fewer than ``batch_size`` per group) are batched together, so an epoch has as many batches as a plain
    ``BatchSampler`` over the same sampler (``len`` is the same) and every item appears exactly once: a
    ``DistributedSampler`` in its place gives every rank the same number of steps.

    Args:
        sampler: yields dataset indices (a ``RandomSampler`` per epoch; Lightning puts a ``DistributedSampler`` in
            its place under DDP, and :mod:`vitkit.training.resume` a seeded one).
        batch_size: items per batch.
        drop_last: leave out a last batch that is not full.
        group_ids: the group of every dataset index.
    """

    def __init__(self, sampler: Sampler[int] | Sequence[int], batch_size: int, drop_last: bool = False,
                 group_ids: Sequence[int] = ()) -> None:
        super().__init__(sampler, batch_size, drop_last)
        if not group_ids:
            raise ValueError("GroupedBatchSampler needs group_ids: the group of every dataset index")
        self.group_ids = list(group_ids)

    def with_sampler(self, sampler: Sampler[int] | Sequence[int]) -> GroupedBatchSampler:
        """The same batching over another sampler."""
        return type(self)(sampler, self.batch_size, self.drop_last, self.group_ids)

    def __iter__(self) -> Iterator[list[int]]:
        pending: dict[int, list[int]] = {}  # group -> its items not yet batched, in sampler order
        for index in self.sampler:
            bucket = pending.setdefault(self.group_ids[index], [])
            bucket.append(index)
            if len(bucket) == self.batch_size:
                yield bucket
                pending[self.group_ids[index]] = []
        rest = [i for g in sorted(pending) for i in pending[g]]  # by group: neighbouring bins batch together
        for start in range(0, len(rest), self.batch_size):
            batch = rest[start:start + self.batch_size]
            if len(batch) == self.batch_size or not self.drop_last:
                yield batch
