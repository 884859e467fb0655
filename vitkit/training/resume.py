"""Exact resume: a run restarted from a mid-epoch (or end-of-epoch) checkpoint continues as if never stopped.

Data order is drawn from ``(seed, epoch)``, each sample's augmentation from ``(seed, epoch, index)`` and each
training step's randomness from ``(seed, rank, epoch, batch index)``; a resumed epoch skips its trained batches by
index. Train loaders other than a map-style ``DataLoader`` with a plain or grouped batch sampler are not covered
(a warning)."""

from __future__ import annotations

import functools
import os
import random
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
)

from vitkit.data.sampling import GroupedBatchSampler

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64 chain): nearby inputs give unrelated seeds."""
    h = 0
    for v in values:
        h = _splitmix64(h ^ (int(v) & _MASK64))
    return h & ((1 << 63) - 1)


# ------------------------------------------------------------------------------------------- host RNG states
HostRNG = tuple[torch.Tensor, tuple, tuple]  # torch CPU generator state, random.getstate(), np.random.get_state()


def get_host_rng() -> HostRNG:
    return torch.get_rng_state(), random.getstate(), np.random.get_state()


def set_host_rng(state: HostRNG) -> None:
    torch.set_rng_state(state[0])
    random.setstate(state[1])
    np.random.set_state(state[2])


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block under host RNGs seeded with ``seed``, then give the caller its RNG states back unchanged."""
    saved = get_host_rng()
    torch.random.default_generator.manual_seed(seed)  # CPU only: CUDA generators are left alone
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        set_host_rng(saved)


# -------------------------------------------------------------------------------------------------- data
class EpochRandomSampler(RandomSampler):
    """A random permutation per epoch, drawn from ``(seed, epoch)``; Lightning calls :meth:`set_epoch`."""

    def __init__(self, data_source, seed: Callable[[], int]) -> None:
        super().__init__(data_source)
        self._seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(mix_seed(self._seed(), self.epoch, 0x5A3))
        yield from torch.randperm(len(self.data_source), generator=g).tolist()


class SeededDataset(Dataset):
    """Wraps a map-style dataset: item ``(index, seed)`` is ``dataset[index]`` computed under RNGs seeded with
    ``seed`` (:func:`seeded`). Other attributes are the wrapped dataset's."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        with seeded(seed):
            return self.dataset[index]

    def __getattr__(self, name: str) -> Any:
        dataset = self.__dict__.get("dataset")  # absent while unpickling in a worker
        if dataset is None:
            raise AttributeError(name)
        return getattr(dataset, name)


class _SeededBatches:
    """The loader's batches of indices, as ``(index, seed)`` pairs, from the resume position on."""

    def __init__(self, batches, loader: ResumableDataLoader) -> None:
        self.batches, self.loader = batches, loader

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        seed, epoch, skip = self.loader._position()
        sampler = getattr(self.batches, "sampler", None)
        if isinstance(sampler, EpochRandomSampler):
            sampler.set_epoch(epoch)
        elif isinstance(sampler, DistributedSampler):
            # Lightning seeds the DistributedSampler it puts in under DDP from PL_GLOBAL_SEED, which a resumed run
            # may not share with the interrupted one (seed_everything: true draws a new one): the run's own seed,
            # restored from the checkpoint, decides the permutation instead
            sampler.seed = seed
            sampler.set_epoch(epoch)
        for k, batch in enumerate(self.batches):
            if k >= skip:
                yield [(int(i), mix_seed(seed, epoch, int(i))) for i in batch]


class _LazyIterator:
    """Builds the DataLoader iterator at the first ``next()``: by then Lightning has restored its loop counters and
    set the sampler's epoch (worker processes would otherwise be handed indices when ``iter()`` is called)."""

    def __init__(self, loader: ResumableDataLoader) -> None:
        self.loader, self.iterator = loader, None

    def __iter__(self) -> _LazyIterator:
        return self

    def __len__(self) -> int:
        return len(self.loader)

    def __next__(self) -> Any:
        if self.iterator is None:  # the next class's iterator (DataLoader's, or a subclass's such as one that reports)
            self.iterator = super(ResumableDataLoader, self.loader).__iter__()
        return next(self.iterator)


class ResumableDataLoader(DataLoader):
    """A map-style ``DataLoader`` whose epochs are reproducible and can start mid-way.

    Takes ``DataLoader``'s arguments plus ``resume``, the :class:`ExactResume` callback. ``shuffle=True`` uses
    :class:`EpochRandomSampler`."""

    def __init__(self, dataset: Dataset, *args: Any, shuffle: bool | None = None, sampler: Any = None,
                 resume: ExactResume | None = None, **kwargs: Any) -> None:
        if not isinstance(dataset, SeededDataset):
            dataset = SeededDataset(dataset)
        self._resume = resume
        if shuffle and sampler is None:
            sampler, shuffle = EpochRandomSampler(dataset, self._seed), None
        grouped = kwargs.get("batch_sampler")
        if isinstance(grouped, GroupedBatchSampler) and type(grouped.sampler) is RandomSampler:
            kwargs["batch_sampler"] = grouped.with_sampler(EpochRandomSampler(dataset, self._seed))
        super().__init__(dataset, *args, shuffle=shuffle, sampler=sampler, **kwargs)

    def _seed(self) -> int:
        return self._resume.seed if self._resume is not None else 0

    def _position(self) -> tuple[int, int, int]:
        """(seed, epoch, batches of this epoch already trained) for the iteration starting now."""
        if self._resume is None:
            return 0, 0, 0
        return self._resume.seed, *self._resume.position()

    @property
    def _index_sampler(self):
        return _SeededBatches(super()._index_sampler, self)

    def __len__(self) -> int:
        return len(super()._index_sampler)

    def __iter__(self) -> _LazyIterator:
        return _LazyIterator(self)

    def state_dict(self) -> dict[str, int]:
        """Informational (the position comes from Lightning's loop counters); makes Lightning treat the loader as
        resumable instead of warning that a mid-epoch restart is unreliable."""
        return {}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        pass


@functools.cache
def resumable_class(base: type[DataLoader]) -> type[DataLoader]:
    """:class:`ResumableDataLoader` for ``DataLoader`` itself, else a subclass of it and ``base`` (same constructor)."""
    if base is DataLoader or issubclass(base, ResumableDataLoader):
        return ResumableDataLoader if base is DataLoader else base
    return type(f"Resumable{base.__name__}", (ResumableDataLoader, base), {"__module__": __name__})


def make_resumable(loader: Any, resume: ExactResume) -> Any:
    """``loader`` (a ``DataLoader`` or a subclass taking the same arguments) made resumable, with the same settings;
    other loaders come back unchanged, with a warning that a mid-epoch resume is not exact for them."""
    if isinstance(loader, ResumableDataLoader):
        return loader
    batches = getattr(loader, "batch_sampler", None)
    grouped = type(batches) is GroupedBatchSampler  # its own sampler draws the order
    sampler = batches.sampler if grouped else getattr(loader, "sampler", None)
    plain = (isinstance(loader, DataLoader) and not isinstance(loader.dataset, IterableDataset)
             and (grouped or (loader.batch_size is not None and type(batches) is BatchSampler))
             and type(sampler) in (RandomSampler, SequentialSampler)
             and not getattr(sampler, "replacement", False)
             and getattr(sampler, "_num_samples", None) is None)
    if plain:
        batching = (dict(batch_sampler=batches) if grouped else
                    dict(batch_size=loader.batch_size, shuffle=isinstance(sampler, RandomSampler),
                         drop_last=loader.drop_last))
        kwargs = dict(**batching, num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                      pin_memory=loader.pin_memory, timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
                      multiprocessing_context=loader.multiprocessing_context, generator=loader.generator,
                      persistent_workers=loader.persistent_workers, pin_memory_device=loader.pin_memory_device)
        if loader.num_workers > 0:
            kwargs["prefetch_factor"] = loader.prefetch_factor
        if hasattr(loader, "in_order"):
            kwargs["in_order"] = loader.in_order
        try:
            return resumable_class(type(loader))(loader.dataset, resume=resume, **kwargs)
        except TypeError:  # a subclass whose constructor is not DataLoader's
            pass
    warnings.warn(f"exact resume: the training loader ({type(loader).__name__}) is not a map-style DataLoader with "
                  "a plain sampler; a run resumed from a mid-epoch checkpoint will not see the same batches",
                  RuntimeWarning, stacklevel=2)
    return loader


# ---------------------------------------------------------------------------------------------- callback
class ExactResume(L.Callback):
    """Callback that makes ``--ckpt_path`` resumes exact.

    Args:
        seed: base seed of the data order, augmentation and the training steps' random numbers; None = the run's
            ``seed_everything`` seed (``PL_GLOBAL_SEED``), else a random one. A resumed run takes the checkpoint's."""

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self._outside: HostRNG | None = None  # the host RNG state outside training steps, while one runs
        self._trainer: L.Trainer | None = None

    @property
    def state_key(self) -> str:
        return "vitkit.ExactResume"

    def position(self) -> tuple[int, int]:
        """(epoch, batches of it already trained) per Lightning's loop counters (restored from a checkpoint)."""
        trainer = self._trainer
        if trainer is None:
            return 0, 0
        loop = trainer.fit_loop
        return int(loop.epoch_progress.current.processed), int(loop.epoch_loop.batch_progress.current.ready)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._trainer = trainer
        if self.seed is None:
            env = os.environ.get("PL_GLOBAL_SEED")
            self.seed = int(env) if env is not None else random.SystemRandom().randrange(2**63)
        # every rank shuffles with one seed (a DistributedSampler shards one permutation); a resume loads the same
        # seed on every rank from the checkpoint after this
        self.seed = int(trainer.strategy.broadcast(self.seed, src=0))
        source = trainer.datamodule if trainer.datamodule is not None else pl_module
        make = getattr(source, "train_dataloader", None)
        if make is None or getattr(make, "_vitkit_resumable", False):
            return

        def train_dataloader() -> Any:
            return make_resumable(make(), self)

        train_dataloader._vitkit_resumable = True  # type: ignore[attr-defined]
        source.train_dataloader = train_dataloader  # this instance only; its class is untouched

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        # The step's random numbers (denoising noise, dropout) come from (seed, rank, epoch, batch): nothing drawn
        # between steps (iterator seeds, validation, a resumed run's sanity check) can shift them.
        step_seed = mix_seed(self.seed, 0x7EA1, trainer.global_rank, trainer.current_epoch, batch_idx)
        self._outside = get_host_rng()
        torch.random.default_generator.manual_seed(step_seed)
        random.seed(step_seed)
        np.random.seed(step_seed % 2**32)
        if pl_module.device.type == "cuda":
            torch.cuda.manual_seed(step_seed)  # the current device's generator (dropout on the GPU)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._restore_outside()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_outside()

    def _restore_outside(self) -> None:
        if self._outside is not None:
            set_host_rng(self._outside)
            self._outside = None

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seed = int(state_dict["seed"])
