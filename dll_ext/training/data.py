"""Splits and DataLoaders whose order depends only on (seed, epoch), so a resumed run sees the
batches an uninterrupted one would.

The training order is DistributedSampler's (one replica in a single process): a permutation
seeded with seed + epoch, each rank taking every world_size-th index. Resuming in the middle of
an epoch skips the batches already done. Evaluation shards the data without padding, so that
sums over the ranks count every example exactly once.
"""
import itertools
import math
from typing import Callable, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from dll_ext.training.distributed import DistEnv
from dll_ext.training.errors import TrainingError
from dll_ext.training.seeding import derive_seed
from dll_ext.training.signals import init_worker, signals_held


def split_dataset(dataset: Dataset, fractions: Sequence[float], seed: int) -> Tuple[Subset, ...]:
    """Random disjoint subsets of `dataset` with the given fractions of its examples (the last one
    takes the rounding remainder), drawn from a generator of their own seeded with `seed`."""
    n = len(dataset)
    sizes = [int(n * f) for f in fractions[:-1]]
    sizes.append(n - sum(sizes))
    if min(sizes) < 1:
        raise TrainingError(f"{n} examples are too few to split into fractions {list(fractions)}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    bounds = list(itertools.accumulate(sizes, initial=0))
    return tuple(Subset(dataset, order[a:b]) for a, b in zip(bounds, bounds[1:]))


class SkipSampler(Sampler):
    """`base`'s indices without the first `skip` (the examples of batches already trained on)."""

    def __init__(self, base: Sampler, skip: int):
        self.base, self.skip = base, skip

    def __iter__(self):
        return itertools.islice(iter(self.base), self.skip, None)

    def __len__(self):
        return max(0, len(self.base) - self.skip)


def steps_per_epoch(dataset: Dataset, batch_size: int, env: DistEnv) -> int:
    return math.ceil(math.ceil(len(dataset) / env.world_size) / batch_size)


def _loader(dataset, sampler, batch_size, workers, collate_fn, generator_seed):
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate_fn, worker_init_fn=init_worker if workers else None,
                      generator=torch.Generator().manual_seed(generator_seed),
                      pin_memory=torch.cuda.is_available())


def train_loader(dataset: Dataset, batch_size: int, env: DistEnv, seed: int, epoch: int,
                 skip_batches: int = 0, workers: int = 0,
                 collate_fn: Optional[Callable] = None, shuffle: bool = True) -> DataLoader:
    """Epoch `epoch`'s shuffled (or with shuffle False, ordered) batches for this rank, from batch
    `skip_batches` on. The workers' seeds come from a generator seeded with (seed, epoch, rank),
    not from the global RNG."""
    sampler = DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank, shuffle=shuffle, seed=seed)
    sampler.set_epoch(epoch)
    return _loader(dataset, SkipSampler(sampler, skip_batches * batch_size), batch_size, workers,
                   collate_fn, derive_seed(seed, epoch, env.rank))


def eval_loader(dataset: Dataset, batch_size: int, env: DistEnv, workers: int = 0,
                collate_fn: Optional[Callable] = None) -> DataLoader:
    """This rank's share of `dataset` (indices rank, rank + world_size, ...), in order."""
    shard = range(env.rank, len(dataset), env.world_size)
    return _loader(dataset, shard, batch_size, workers, collate_fn, 0)


def batches(loader: DataLoader):
    """iter(loader), with the stop signals held back while its worker processes start."""
    with signals_held():
        return iter(loader)
