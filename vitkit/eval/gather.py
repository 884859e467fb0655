"""Detections of every rank, gathered under torch.distributed without ``DistributedSampler``'s duplicates."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from vitkit.utils.distributed import all_gather_objects, is_distributed


def merge_rank_results(
    per_rank_results: Sequence[Sequence[Mapping[str, Any]]],
    per_rank_image_ids: Sequence[Iterable[int]] | None = None,
) -> list[dict[str, Any]]:
    """Merge per-rank detections, keeping each image's detections from the lowest rank that has it.

    Args:
        per_rank_results: rank r's result dicts at index r.
        per_rank_image_ids: rank r's processed image ids at index r, or None (ownership follows the detections).

    Returns:
        The merged result dicts, rank-major, each rank's order preserved.
    """
    owner: dict[int, int] = {}
    if per_rank_image_ids is not None:
        for rank, ids in enumerate(per_rank_image_ids):
            for image_id in ids:
                owner.setdefault(int(image_id), rank)
    merged = []
    for rank, rank_results in enumerate(per_rank_results):
        for r in rank_results:
            if owner.setdefault(int(r["image_id"]), rank) == rank:
                merged.append(r)
    return merged


def gather_results(
    results: Sequence[Mapping[str, Any]], image_ids: Iterable[int] | None = None
) -> list[dict[str, Any]]:
    """Collect every rank's detections on every rank, without ``DistributedSampler``'s duplicates (collective).

    Without distributed, or with one rank, the results come back as a list, unchanged.

    Args:
        results: this rank's COCO result dicts.
        image_ids: the images this rank processed (also those without detections), optional.

    Returns:
        All ranks' result dicts, one rank's copy per image, identical on every rank.
    """
    if not is_distributed():
        return list(results)

    payload = (list(results), None if image_ids is None else [int(i) for i in image_ids])
    gathered = all_gather_objects(payload)
    per_rank_ids = [ids for _, ids in gathered]
    if any(ids is None for ids in per_rank_ids):  # some rank gave no image ids: follow the detections
        per_rank_ids = None
    return merge_rank_results([res for res, _ in gathered], per_rank_ids)


def gather_image_ids(image_ids: Iterable[int]) -> list[int]:
    """Sorted unique image ids processed over all ranks, identical on every rank (collective)."""
    ids = {int(i) for i in image_ids}
    if not is_distributed():
        return sorted(ids)

    gathered = all_gather_objects(sorted(ids))
    return sorted({i for rank_ids in gathered for i in rank_ids})
