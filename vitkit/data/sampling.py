"""Batches of images with similar aspect ratios (:class:`GroupedBatchSampler`), so that batches need less padding."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Sequence

from torch.utils.data import BatchSampler, Sampler


def aspect_ratio_groups(ratios: Sequence[float], factor: int) -> list[int]:
    """The group of each width / height ratio (> 0): its bin among ``2 ** k / factor`` for k in ``-factor..factor``.

    ``factor`` (>= 1) is bins per doubling of the ratio (torchvision's ``--aspect-ratio-group-factor``).

    Returns:
        A group id per item, in ``0..2 * factor + 1``."""
    if factor < 1:
        raise ValueError(f"aspect_ratio_groups: factor must be >= 1, got {factor}")
    edges = [2.0 ** (k / factor) for k in range(-factor, factor + 1)]
    bad = [i for i, r in enumerate(ratios) if not (math.isfinite(r) and r > 0)]
    if bad:
        raise ValueError(f"aspect_ratio_groups: item {bad[0]} has aspect ratio {ratios[bad[0]]!r}; every width / "
                         "height ratio must be a positive number")
    return [bisect.bisect_right(edges, r) for r in ratios]


class GroupedBatchSampler(BatchSampler):
    """Batches whose items share a group, in the order ``sampler`` yields them.

    A batch is yielded as soon as it is full; the items left at the end of an epoch are batched together, so ``len``
    equals a plain ``BatchSampler``'s and every item appears exactly once.

    Args:
        sampler: yields dataset indices.
        drop_last: leave out a last batch that is not full.
        group_ids: the group of every dataset index."""

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
