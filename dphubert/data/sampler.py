"""Length-bucketed, rank-sharded, exactly resumable batch sampler.

Each epoch (chosen with ``set_epoch``) is planned from ``(seed, epoch)`` alone, so every rank plans the
same global list of batches without communicating:

1. Utterances are sorted by length (ties in random order) and cut into ``num_buckets`` buckets of
   equal count; each bucket is shuffled (``num_buckets=None``: no buckets, batches are runs of the
   sorted list and vary between epochs only in ties and order).
2. Each bucket is packed greedily into batches whose cost ``len(batch) * shortest length`` (the audio
   kept after cropping every item to the shortest one) stays within ``max_batch_seconds``.
3. The batches of all buckets are shuffled together: a different order every epoch.
4. Sharding: ``drop_last=False`` pads the list by repeating its first batches until its length is a
   multiple of ``world_size``; ``drop_last=True`` drops the last ``len % world_size`` batches. Rank
   ``r`` takes global batches ``r, r + W, r + 2W, ...``, so all ranks make the same number of steps.

Usage::

    sampler = BucketBatchSampler(dataset.lengths, max_batch_seconds=160, num_buckets=50, seed=1,
                                 rank=rank, world_size=world_size)
    sampler.load_state_dict(checkpoint["sampler"])     # optional: resume mid-epoch
    for epoch in range(start_epoch, num_epochs):
        sampler.set_epoch(epoch)                       # keeps a loaded position for the same epoch
        for batch in loader:                           # yields IndexBatch lists
            ...
            checkpoint["sampler"] = sampler.state_dict(consumed=batch["step"] + 1)
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from dphubert.data.datadir import SAMPLE_RATE


class IndexBatch(list):
    """A list of dataset indices that also tells where it sits in the epoch.

    ``step``: this rank's batch number in the epoch (0-based); ``global_index``: its position in the
    global (all ranks) batch order, unique within an epoch.
    """

    def __init__(self, indices: Sequence[int], epoch: int, step: int, global_index: int):
        super().__init__(indices)
        self.epoch = epoch
        self.step = step
        self.global_index = global_index


class BucketBatchSampler(Sampler):
    def __init__(
        self,
        lengths: Sequence[int],
        max_batch_seconds: float,
        num_buckets: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        sample_rate: int = SAMPLE_RATE,
    ):
        """``lengths``: samples per utterance (identical on every rank)."""
        if len(lengths) == 0:
            raise ValueError("BucketBatchSampler: no utterances (lengths is empty)")
        if not 0 <= rank < world_size:
            raise ValueError(f"BucketBatchSampler: rank {rank} is outside world_size {world_size}")
        if num_buckets is not None and num_buckets < 1:
            raise ValueError(f"BucketBatchSampler: num_buckets must be >= 1, got {num_buckets}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.max_batch_samples = int(max_batch_seconds * sample_rate)
        longest = int(self.lengths.max())
        if longest > self.max_batch_samples:
            raise ValueError(
                f"BucketBatchSampler: max_batch_seconds={max_batch_seconds} is shorter than the longest "
                f"utterance ({longest / sample_rate:.2f} s); raise it or lower the dataset's max_seconds"
            )
        self.num_buckets = num_buckets
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self._start = 0  # batches of self.epoch to skip in the next __iter__ (set by load_state_dict)
        self._handed_out = 0  # batches of self.epoch handed out so far (including skipped ones)
        self._plan_cache: tuple[int, list[list[int]]] | None = None
        if len(self._rank_batches()) == 0:
            raise ValueError(
                f"BucketBatchSampler: only {len(self._global_batches())} batches for {world_size} ranks "
                f"with drop_last=True; use drop_last=False or a smaller max_batch_seconds"
            )

    # -- planning ------------------------------------------------------------------------------

    def _global_batches(self) -> list[list[int]]:
        """All batches of the current epoch in global order, before sharding (cached per epoch)."""
        if self._plan_cache is None or self._plan_cache[0] != self.epoch:
            self._plan_cache = (self.epoch, self._plan(self.epoch))
        return self._plan_cache[1]

    def _plan(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        if self.shuffle:
            permutation = rng.permutation(len(self.lengths))
            order = permutation[np.argsort(self.lengths[permutation], kind="stable")]
        else:
            order = np.argsort(self.lengths, kind="stable")
        buckets = [order] if self.num_buckets is None else np.array_split(order, self.num_buckets)
        batches = []
        for bucket in buckets:
            if self.shuffle and self.num_buckets is not None:
                bucket = rng.permutation(bucket)
            batches.extend(self._pack(bucket.tolist()))
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _pack(self, indices: list[int]) -> list[list[int]]:
        """Greedily cut ``indices`` (in order) into batches with len(batch) * shortest <= budget."""
        batches, batch, shortest = [], [], 0
        for index in indices:
            length = int(self.lengths[index])
            new_shortest = min(shortest, length) if batch else length
            if batch and (len(batch) + 1) * new_shortest > self.max_batch_samples:
                batches.append(batch)
                batch, new_shortest = [], length
            batch.append(index)
            shortest = new_shortest
        if batch:
            batches.append(batch)
        return batches

    def _rank_batches(self) -> list[list[int]]:
        batches = self._global_batches()
        if self.drop_last:
            total = len(batches) // self.world_size * self.world_size
            batches = batches[:total]
        else:
            total = math.ceil(len(batches) / self.world_size) * self.world_size
            batches = [batches[i % len(batches)] for i in range(total)]
        return batches[self.rank :: self.world_size]

    # -- Sampler API ---------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Plan epoch ``epoch``; a position loaded for this same epoch is kept."""
        if epoch != self.epoch:
            self.epoch = epoch
            self._start = 0
            self._handed_out = 0

    def __len__(self) -> int:
        """Batches this rank makes in the current epoch (the full epoch, even when resuming)."""
        return len(self._rank_batches())

    def __iter__(self) -> Iterator[IndexBatch]:
        start, self._start = self._start, 0  # a loaded position applies to one iteration only
        self._handed_out = start
        for step, batch in enumerate(self._rank_batches()[start:], start=start):
            self._handed_out = step + 1
            yield IndexBatch(batch, self.epoch, step, step * self.world_size + self.rank)

    # -- resuming ------------------------------------------------------------------------------

    def state_dict(self, consumed: int | None = None) -> dict:
        """{"epoch", "position"}: position = batches of this epoch already used.

        A DataLoader with workers draws batches ahead of training, so pass ``consumed`` (the
        ``step + 1`` of the last batch actually trained on); without it the batches handed out
        so far are counted.
        """
        position = self._handed_out if consumed is None else consumed
        return {"epoch": self.epoch, "position": position, "world_size": self.world_size, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        """Make the next iteration continue epoch ``state["epoch"]`` after ``state["position"]`` batches."""
        for key in ("world_size", "seed"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"BucketBatchSampler: the saved state has {key}={state[key]} but this sampler has "
                    f"{key}={getattr(self, key)}; exact resuming needs the same {key}"
                )
        self.epoch = int(state["epoch"])
        position = int(state["position"])
        if not 0 <= position <= len(self):
            raise ValueError(f"BucketBatchSampler: position {position} is outside epoch of {len(self)} batches")
        self._start = position
        self._handed_out = position
