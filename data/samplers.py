"""Batch samplers of (item, seed) pairs: `EpochSampler` (a random permutation) and `BalancedSampler`
(speaker-balanced batches). Each is a function of (seed, epoch) alone and shards batches disjointly across
DDP ranks; the per-item seed drives that item's crop (data/crops.py `TrainDataset`). `set_epoch(epoch,
start_batch)` resumes an epoch at one of its batches: the batches after it are those of the whole epoch, and
`len()` stays the epoch's count of batches per rank.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from utils import UserError


class EpochSampler(torch.utils.data.Sampler):
    """Batches of (item, seed) pairs: a fresh permutation per epoch, a function of (seed, epoch) alone.
    Under DDP each rank takes every world_size-th batch, so ranks see disjoint data; the last incomplete
    batch (and the remainder that does not divide among ranks) is dropped."""

    def __init__(self, num_items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if num_items < batch_size * world_size:
            raise UserError(f"{num_items} training utterances are fewer than one batch of {batch_size} "
                            f"x {world_size} process(es); lower --batch-size")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch; `start_batch` skips this rank's first batches (resuming mid-epoch)."""
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self.num_items // (self.batch_size * self.world_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.num_items)
        seeds = rng.integers(0, 2**63 - 1, size=self.num_items)
        for b in range(self.start_batch, len(self)):
            first = (b * self.world_size + self.rank) * self.batch_size
            yield [(int(i), int(seeds[i])) for i in order[first:first + self.batch_size]]


class BalancedSampler(torch.utils.data.Sampler):
    """Speaker-balanced batches of (item, seed) pairs: each batch holds batch_size / N distinct speakers with
    N = `utts_per_speaker_in_batch` utterances each, laid out speaker-major (reshape to (speakers, N)).
    Same interface and guarantees as `EpochSampler`: a function of (seed, epoch) alone (`set_epoch`), ranks
    take every world_size-th batch (disjoint batches; only an utterance repeated as padding, below, can fall
    on two ranks, with another crop seed).

    Per epoch each speaker's utterances are shuffled and cut into groups of N; a speaker with fewer than N
    utterances, or a last group short of N, is filled by repeating the speaker's own utterances (each
    repeat gets its own seed, so another crop): every speaker is trained on and every utterance is seen at
    least once per epoch. The groups are dealt to the batches at random (`_deal`), never two of one
    speaker in a batch. The epoch has (total groups // speakers per batch) batches, about the random
    sampler's count; the fewer than speakers-per-batch groups left over are dropped at random, and a
    speaker holding more than 1 / speakers-per-batch of all groups is capped at one group per batch.
    """

    def __init__(self, speaker_of_item: Sequence[int], batch_size: int, utts_per_speaker_in_batch: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        per_speaker = utts_per_speaker_in_batch
        if per_speaker < 1 or batch_size % per_speaker:
            raise UserError(f"batch_size {batch_size} is not a multiple of utts_per_speaker_in_batch "
                            f"{per_speaker}")
        speaker_of_item = np.asarray(speaker_of_item, dtype=np.int64)
        order = np.argsort(speaker_of_item, kind="stable")
        _, starts, counts = np.unique(speaker_of_item[order], return_index=True, return_counts=True)
        self.items_of_speaker = np.split(order, starts[1:])
        self.speakers_per_batch = batch_size // per_speaker
        if len(counts) < self.speakers_per_batch:
            raise UserError(f"{len(counts)} training speakers are fewer than the {self.speakers_per_batch} a "
                            f"balanced batch of {batch_size} needs; lower --batch-size or raise "
                            f"--utts-per-speaker-in-batch")
        self.groups_of_speaker = _capped_groups(-(-counts // per_speaker), self.speakers_per_batch)
        self.num_batches = int(self.groups_of_speaker.sum()) // self.speakers_per_batch  # all ranks together
        if self.num_batches < world_size:
            raise UserError(f"{len(speaker_of_item)} training utterances are fewer than one balanced batch of "
                            f"{batch_size} x {world_size} process(es); lower --batch-size")
        self.batch_size, self.per_speaker, self.seed = batch_size, per_speaker, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch; `start_batch` skips this rank's first batches (resuming mid-epoch)."""
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self.num_batches // self.world_size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = self._deal(self._kept_groups(rng), rng)  # (num_batches, speakers_per_batch, N) items
        order = rng.permutation(self.num_batches)
        seeds = rng.integers(0, 2**63 - 1, size=(self.num_batches, self.batch_size))
        for b in range(self.start_batch, len(self)):
            chosen = order[b * self.world_size + self.rank]
            yield [(int(i), int(s)) for i, s in zip(batches[chosen].ravel(), seeds[chosen])]

    def _kept_groups(self, rng: np.random.Generator) -> list[np.ndarray]:
        """Each speaker's groups this epoch, (groups, N) items; the leftover groups dropped at random."""
        groups = [np.resize(rng.permutation(items), (g, self.per_speaker))
                  for items, g in zip(self.items_of_speaker, self.groups_of_speaker)]
        total = int(self.groups_of_speaker.sum())
        dropped = rng.choice(total, size=total - self.num_batches * self.speakers_per_batch, replace=False)
        owner = np.searchsorted(np.cumsum(self.groups_of_speaker), dropped, side="right")
        keep = self.groups_of_speaker - np.bincount(owner, minlength=len(groups))
        return [g[:k] for g, k in zip(groups, keep)]

    def _deal(self, groups: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
        """Deal the groups, speakers in random order, to the batches in the order of a shuffled deck; each
        pass through the deck fills one more slot of every batch. When a speaker's groups run past the end
        of the deck, the next deck is shuffled with the batches that speaker just got at its back, so no
        speaker lands twice in a batch (it never has more groups than there are batches)."""
        filled = np.zeros(self.num_batches, dtype=np.int64)
        batches = np.empty((self.num_batches, self.speakers_per_batch, self.per_speaker), dtype=np.int64)
        deck, pos = rng.permutation(self.num_batches), 0
        for s in rng.permutation(len(groups)):
            chosen = deck[pos:pos + len(groups[s])]
            pos += len(chosen)
            if len(chosen) < len(groups[s]):  # next pass: a fresh deck, this speaker's batches last
                deck = rng.permutation(self.num_batches)
                deck = np.concatenate([deck[~np.isin(deck, chosen)], deck[np.isin(deck, chosen)]])
                pos = len(groups[s]) - len(chosen)
                chosen = np.concatenate([chosen, deck[:pos]])
            batches[chosen, filled[chosen]] = groups[s]
            filled[chosen] += 1
        return batches


def _capped_groups(groups: np.ndarray, speakers_per_batch: int) -> np.ndarray:
    """Cap each speaker at one group per batch: a batch never holds a speaker twice."""
    while True:
        capped = np.minimum(groups, groups.sum() // speakers_per_batch)
        if (capped == groups).all():
            return groups
        groups = capped
