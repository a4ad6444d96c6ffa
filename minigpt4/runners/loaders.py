"""The runner's data plumbing: samplers, loaders and batch helpers.

Training data order depends only on `(run.seed, epoch)`: the sampler and the loader have their
own generators, never the global one, and `ResumableDistributedSampler` can start part-way into
an epoch, so a resumed run continues with the same batches as an uninterrupted one.
`sharded_loader` is the one evaluation loader of validation and `hero-eval`. `DataMixin` gives
`RunnerBase` its split lookup, batches per epoch and train/validation loaders.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import torch
from omegaconf import DictConfig
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler, IterableDataset
from torch.utils.data.dataloader import default_collate

__all__ = ["DataMixin", "ResumableDistributedSampler", "batch_size_of", "move_to_device", "sharded_loader"]


class ResumableDistributedSampler(DistributedSampler):
    """DistributedSampler (seeded shuffle, `set_epoch`) that can start part-way into an epoch.

    `set_start(n)` skips this rank's first `n` indices of the current epoch, so a resumed run
    does not load the batches it already trained on. Also used with one replica, so single-
    process and DDP runs draw the same permutation.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, shuffle: bool = True, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0

    def set_start(self, start: int) -> None:
        self.start = max(0, int(start))

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start:])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


def _seed_worker(worker_id: int) -> None:
    """Give each loader worker distinct python/numpy seeds derived from its torch seed."""
    import random

    import numpy as np

    seed = torch.initial_seed() % (2**32)
    random.seed(seed)
    np.random.seed(seed)


def move_to_device(obj: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Tensors (also inside dicts/lists/tuples) to `device`; everything else untouched.

    A list or tuple without tensors comes back as the same object (string fields stay as-is).
    """
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, Mapping):
        return {k: move_to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        moved = [move_to_device(v, device, non_blocking) for v in obj]
        if all(m is o for m, o in zip(moved, obj)):
            return obj
        return moved if isinstance(obj, list) else tuple(moved)
    return obj


def batch_size_of(samples: Any) -> int:
    """Leading size of the first tensor in a batch (dict or sequence), else of the first list; else 1."""
    values = list(samples.values()) if isinstance(samples, Mapping) else \
        list(samples) if isinstance(samples, (list, tuple)) else [samples]
    for v in values:
        if isinstance(v, torch.Tensor) and v.ndim > 0:
            return int(v.shape[0])
    for v in values:
        if isinstance(v, (list, tuple)):
            return len(v)
    return 1


def _collater_of(ds: Any) -> Callable[[Any], Any]:
    while isinstance(ds, ConcatDataset):
        ds = ds.datasets[0]
    return getattr(ds, "collater", None) or default_collate


def _set_dataset_epoch(ds: Any, epoch: int) -> None:
    if isinstance(ds, ConcatDataset):
        for sub in ds.datasets:
            _set_dataset_epoch(sub, epoch)
    elif hasattr(ds, "set_epoch"):
        ds.set_epoch(epoch)


def sharded_loader(dataset: Any, batch_size: int, num_workers: int, rank: int, world_size: int,
                   pin_memory: bool, seed: int = 0) -> DataLoader:
    """The evaluation loader of validation (runner) and `hero-eval`: rank `r` of `w` reads
    dataset indices r, r+w, ... in order (`records.shard_indices`: no padding, no shuffle),
    so gathering the ranks' results covers every clip exactly once; a streaming dataset
    splits its shards by rank itself."""
    from minigpt4.evaluation.records import shard_indices

    common = dict(batch_size=batch_size, num_workers=num_workers, collate_fn=_collater_of(dataset),
                  pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed))
    _set_dataset_epoch(dataset, 0)
    if isinstance(dataset, IterableDataset):
        return DataLoader(dataset, **common)
    return DataLoader(dataset, sampler=shard_indices(len(dataset), rank, world_size), **common)


class DataMixin:
    """`RunnerBase`'s datasets by split, batches per epoch, and its train and validation loaders."""

    datasets: Mapping[str, Mapping[str, Any]]
    run_cfg: RunConfig
    device: torch.device
    rank: int
    world_size: int
    seed: int

    def _split_dataset(self, splits: Sequence[str]) -> Optional[Any]:
        found = [ds for name in self.datasets for split, ds in self.datasets[name].items() if split in splits]
        if not found:
            return None
        if len(found) == 1:
            return found[0]
        if any(isinstance(d, IterableDataset) for d in found):
            raise ValueError(f"splits {list(splits)} come from several datasets and one streams (IterableDataset); "
                             "give one streaming dataset per split")
        return ConcatDataset(found)

    @property
    def train_dataset(self) -> Any:
        ds = self._split_dataset(list(self.run_cfg.train_splits))
        if ds is None:
            have = {name: sorted(s) for name, s in self.datasets.items()}
            raise ValueError(f"no dataset has a split in run.train_splits={list(self.run_cfg.train_splits)}; "
                             f"built splits: {have}")
        return ds

    @property
    def valid_dataset(self) -> Optional[Any]:
        return self._split_dataset(list(self.run_cfg.valid_splits))

    def iters_per_epoch(self, dataset: Any) -> int:
        """Batches per epoch on each rank: len(loader), capped by run.iters_per_epoch."""
        cap = self.run_cfg.iters_per_epoch
        bs = int(self.run_cfg.batch_size_train)
        if isinstance(dataset, IterableDataset):
            if not cap:
                raise ValueError("run.iters_per_epoch is required for streaming (IterableDataset) training data")
            return int(cap)
        per_rank = math.ceil(len(dataset) / self.world_size)
        n = per_rank // bs if self.run_cfg.drop_last else math.ceil(per_rank / bs)
        if n == 0:
            raise ValueError(f"train data has {len(dataset)} samples ({per_rank} per rank), fewer than "
                             f"run.batch_size_train={bs}: no full batch (lower the batch size or set run.drop_last=false)")
        return min(n, int(cap)) if cap else n

    def _train_batches(self, dataset: Any, epoch: int, skip: int) -> Iterator[Any]:
        """This rank's batches of `epoch`, starting after the first `skip` ones."""
        bs = int(self.run_cfg.batch_size_train)
        _set_dataset_epoch(dataset, epoch)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 1009 + self.rank)
        common = dict(batch_size=bs, num_workers=self.run_cfg.num_workers,
                      collate_fn=_collater_of(dataset), pin_memory=self.device.type == "cuda",
                      worker_init_fn=_seed_worker, generator=gen)
        if isinstance(dataset, IterableDataset):
            loader = DataLoader(dataset, **common)
            return self._cycle(loader, skip)
        sampler = ResumableDistributedSampler(dataset, self.world_size, self.rank, shuffle=True, seed=self.seed)
        sampler.set_epoch(epoch)
        sampler.set_start(skip * bs)
        loader = DataLoader(dataset, sampler=sampler, drop_last=self.run_cfg.drop_last, **common)
        return iter(loader)

    @staticmethod
    def _cycle(loader: DataLoader, skip: int) -> Iterator[Any]:
        """Stream batches, restarting the stream when it runs dry (every rank sees iters_per_epoch)."""
        skipped = 0
        while True:
            empty = True
            for batch in loader:
                empty = False
                if skipped < skip:
                    skipped += 1
                    continue
                yield batch
            if empty:
                raise ValueError("the streaming training dataset yielded no batch")

    def _valid_loader(self, dataset: Any) -> DataLoader:
        return sharded_loader(dataset, self.run_cfg.batch_size_eval, self.run_cfg.num_workers,
                              self.rank, self.world_size, self.device.type == "cuda", self.seed)
