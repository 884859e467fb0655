"""The one "is this run distributed?" check, and the object collectives built on it.

Without a process group (or with one rank) the collectives return their input as one rank's share; with several
ranks every rank must make the same calls in the same order."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist


def world_size() -> int:
    """The number of ranks of the initialised process group; 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_distributed() -> bool:
    """True under an initialised process group with more than one rank (only then do collectives communicate)."""
    return world_size() > 1


def rank() -> int:
    """This process's rank in the initialised process group; 0 without one."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), on every rank, in rank order; ``[obj]`` when not distributed."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s picklable ``obj`` on every rank (the others may pass None); ``obj`` itself when not
    distributed."""
    if not is_distributed():
        return obj
    payload = [obj]
    dist.broadcast_object_list(payload, src=src)
    return payload[0]
