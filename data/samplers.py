"""Batch samplers of (item, seed) pairs: `EpochSampler` (a random permutation) and `BalancedSampler`
(speaker-balanced batches). Each is a function of (seed, epoch) alone and shards batches disjointly across
DDP ranks; the per-item seed drives that item's crop (data/crops.py `TrainDataset`). `set_epoch(epoch,
start_batch)` resumes an epoch at one of its batches: the batches after it are those of the whole epoch, and
`len()` stays the epoch's count of batches per rank. `set_left_out(mask)` leaves items out of the epochs that
follow (in-training filtering of noisy labels): the order over the remaining items stays the seeded one.

In-training filtering (issue 17): `LossRecord` keeps each training utterance's loss from its training steps,
and `leave_out` picks each speaker's highest-loss share of them from it, a pure function of the record.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

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
        self.left_out, self.num_kept = np.zeros(num_items, dtype=bool), num_items

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch; `start_batch` skips this rank's first batches (resuming mid-epoch)."""
        self.epoch, self.start_batch = epoch, start_batch

    def set_left_out(self, left_out: np.ndarray | None) -> None:
        """Leave the items of the boolean mask `left_out` (None = none) out of the following epochs. The others
        keep their places in the epoch's permutation and their crop seeds: only the left-out ones are skipped."""
        left_out = np.zeros(self.num_items, dtype=bool) if left_out is None else np.asarray(left_out, dtype=bool)
        num_kept = self.num_items - int(left_out.sum())
        if num_kept < self.batch_size * self.world_size:
            raise UserError(f"{num_kept} training utterances left after filtering are fewer than one batch of "
                            f"{self.batch_size} x {self.world_size} process(es); lower --filter-share or --batch-size")
        self.left_out, self.num_kept = left_out, num_kept

    def __len__(self) -> int:
        return self.num_kept // (self.batch_size * self.world_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.num_items)
        seeds = rng.integers(0, 2**63 - 1, size=self.num_items)
        order = order[~self.left_out[order]]  # all of it when nothing is left out
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
        _, starts = np.unique(speaker_of_item[order], return_index=True)
        self.all_items_of_speaker = np.split(order, starts[1:])
        self.speakers_per_batch = batch_size // per_speaker
        if len(starts) < self.speakers_per_batch:
            raise UserError(f"{len(starts)} training speakers are fewer than the {self.speakers_per_batch} a "
                            f"balanced batch of {batch_size} needs; lower --batch-size or raise "
                            f"--utts-per-speaker-in-batch")
        self.batch_size, self.per_speaker, self.seed = batch_size, per_speaker, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start_batch = 0, 0
        self.set_left_out(None)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch; `start_batch` skips this rank's first batches (resuming mid-epoch)."""
        self.epoch, self.start_batch = epoch, start_batch

    def set_left_out(self, left_out: np.ndarray | None) -> None:
        """Leave the items of the boolean mask `left_out` (None = none) out of the following epochs: the
        groups, the batches and len() are those of the remaining items."""
        mask = None if left_out is None else np.asarray(left_out, dtype=bool)
        kept = [items if mask is None else items[~mask[items]] for items in self.all_items_of_speaker]
        counts = np.array([len(items) for items in kept], dtype=np.int64)
        groups = _capped_groups(-(-counts // self.per_speaker), self.speakers_per_batch)
        num_batches = int(groups.sum()) // self.speakers_per_batch  # all ranks together
        if num_batches < self.world_size:
            raise UserError(f"{counts.sum()} training utterances are fewer than one balanced batch of "
                            f"{self.batch_size} x {self.world_size} process(es); lower --batch-size")
        self.items_of_speaker, self.groups_of_speaker, self.num_batches = kept, groups, num_batches

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


# --- in-training filtering of noisy labels ---------------------------------------------------------------

def round_half_up(x: float) -> int:
    """Rounding with halves up: the per-speaker counts of in-training filtering and of train_sort's removal_counts
    (1e-9: 0.25 * 10 = 2.5 and 30 * 5 / 100 = 1.5 round up despite float error)."""
    return math.floor(x + 0.5 + 1e-9)


def leave_out(losses: np.ndarray, speaker_of_item: Sequence[int], share: float) -> np.ndarray:
    """Boolean mask of the items to leave out: of each speaker's n items, the round(share x n) (halves up) with
    the highest recorded loss; among equal losses the earlier item in the list goes first. Every speaker keeps
    at least one item, and an item without a recorded loss (NaN) is never left out."""
    losses = np.asarray(losses, dtype=np.float64)
    speaker = np.asarray(speaker_of_item, dtype=np.int64)
    scored = ~np.isnan(losses)
    order = np.lexsort((np.arange(len(losses)), np.where(scored, -losses, np.inf), speaker))  # by speaker, loss
    speakers, starts, n = np.unique(speaker[order], return_index=True, return_counts=True)
    wanted = np.array([round_half_up(share * k) for k in n], dtype=np.int64)
    count = np.minimum(np.minimum(wanted, n - 1), np.bincount(speaker[scored], minlength=speakers.max() + 1)[speakers])
    rank = np.arange(len(order)) - np.repeat(starts, n)  # position within the speaker, highest loss first
    out = np.zeros(len(losses), dtype=bool)
    out[order[rank < np.repeat(count, n)]] = True
    return out


@dataclass
class LossRecord:
    """Each training utterance's loss at its own training steps, for `leave_out`. `losses` holds the loss each
    utterance had in the latest epoch it was trained in (NaN = never yet): a left-out utterance is not trained
    on, so it keeps the loss that left it out. `sums` and `counts` gather the current epoch's (one process's)
    losses; `close_epoch` turns them, summed over the processes, into the epoch's mean loss per utterance (an
    utterance the balanced sampler repeats gets the mean of its crops)."""
    losses: np.ndarray  # (N,) float64
    sums: np.ndarray  # (N,) float64: this epoch's loss sum per utterance, this process
    counts: np.ndarray  # (N,) int64: ...and the number of its crops trained on

    @classmethod
    def empty(cls, num_items: int) -> LossRecord:
        return cls(np.full(num_items, np.nan), np.zeros(num_items), np.zeros(num_items, dtype=np.int64))

    def add(self, items: np.ndarray, losses: np.ndarray) -> None:
        """The per-sample losses of trained items, in training order (np.add.at: repeats add up)."""
        np.add.at(self.sums, items, losses)
        np.add.at(self.counts, items, 1)

    def close_epoch(self, sums: np.ndarray, counts: np.ndarray) -> None:
        """End the epoch with the sums and counts of every process: each trained utterance's loss becomes its
        mean this epoch; the others keep theirs. The next epoch starts from zero sums."""
        trained = counts > 0
        self.losses[trained] = sums[trained] / counts[trained]
        self.sums[:], self.counts[:] = 0.0, 0
