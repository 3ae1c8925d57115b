"""The epoch sampler and the speaker-balanced sampler (data/samplers.py)."""

from collections import Counter

import numpy as np
import pytest

from data.samplers import BalancedSampler, EpochSampler
from utils import UserError


def test_sampler_is_a_function_of_seed_and_epoch_and_shards_disjointly():
    s = EpochSampler(100, 8, seed=0)
    s.set_epoch(0)
    epoch0 = list(s)
    assert len(epoch0) == len(s) == 12 and all(len(b) == 8 for b in epoch0)
    assert len({i for b in epoch0 for i, _ in b}) == 96
    s.set_epoch(0)
    assert list(s) == epoch0
    s.set_epoch(1)
    assert list(s) != epoch0
    ranks = [EpochSampler(100, 8, seed=0, rank=r, world_size=2) for r in range(2)]
    seen = [{i for b in r for i, _ in b} for r in ranks]
    assert len(ranks[0]) == 6 and not seen[0] & seen[1]


# --- balanced sampler ----------------------------------------------------------------------------------

def test_balanced_batches_hold_n_utterances_of_distinct_speakers():
    counts = [5, 4, 4, 3, 2, 1, 6, 8, 2, 2]  # 20 groups of 2 -> 5 batches of 4 speakers
    speaker_of_item = np.repeat(np.arange(len(counts)), counts)
    sampler = BalancedSampler(speaker_of_item, 8, 2, seed=0)
    sampler.set_epoch(0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 5
    for batch in batches:
        items = np.array([i for i, _ in batch]).reshape(4, 2)
        speakers = speaker_of_item[items]
        assert (speakers == speakers[:, :1]).all() and len(set(speakers[:, 0])) == 4
    seen = Counter(i for b in batches for i, _ in b)
    assert set(seen) == set(range(len(speaker_of_item)))  # every utterance at least once
    assert len({s for b in batches for _, s in b}) == 40  # a repeated utterance gets another crop seed
    sampler.set_epoch(0)
    assert list(sampler) == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches


def test_balanced_sampler_is_deterministic_and_ranks_are_disjoint():
    speaker_of_item = np.repeat(np.arange(10), 4)
    assert list(BalancedSampler(speaker_of_item, 8, 2, seed=3)) == list(BalancedSampler(speaker_of_item, 8, 2, seed=3))
    assert list(BalancedSampler(speaker_of_item, 8, 2, seed=3)) != list(BalancedSampler(speaker_of_item, 8, 2, seed=4))
    ranks = [BalancedSampler(speaker_of_item, 8, 2, seed=3, rank=r, world_size=2) for r in range(2)]
    seen = [[i for b in r for i, _ in b] for r in ranks]
    assert len(ranks[0]) == 2 and all(len(s) == len(set(s)) == 16 for s in seen) and not set(seen[0]) & set(seen[1])


def test_balanced_sampler_caps_a_dominant_speaker_and_checks_its_arguments():
    speaker_of_item = np.repeat(np.arange(3), [30, 2, 2])
    batches = list(BalancedSampler(speaker_of_item, 2, 1, seed=0))
    assert len(batches) == 4 and all(len({speaker_of_item[i] for i, _ in b}) == 2 for b in batches)
    with pytest.raises(UserError, match="not a multiple"):
        BalancedSampler(speaker_of_item, 5, 2, seed=0)
    with pytest.raises(UserError, match="3 training speakers are fewer than the 4"):
        BalancedSampler(speaker_of_item, 8, 2, seed=0)


@pytest.mark.parametrize("make", [lambda r: EpochSampler(100, 8, seed=0, rank=r, world_size=2),
                                  lambda r: BalancedSampler(np.repeat(np.arange(10), 10), 8, 2, seed=0, rank=r,
                                                            world_size=2)])
def test_start_batch_resumes_an_epoch_at_the_same_batches(make):
    """A run resumed mid-epoch (train.py --checkpoint-every) takes exactly the batches it had not reached."""
    for rank in range(2):
        sampler = make(rank)
        sampler.set_epoch(3)
        whole = list(sampler)
        sampler.set_epoch(3, start_batch=2)
        assert list(sampler) == whole[2:] and len(sampler) == len(whole) > 2
        sampler.set_epoch(3)
        assert list(sampler) == whole


def test_padding_may_repeat_an_utterance_on_two_ranks_but_never_a_draw():
    """train.check_disjoint_shards compares (utterance, crop seed) draws: the balanced sampler's padding puts
    one utterance on both ranks with other crop seeds (allowed); one shard twice is caught."""
    from train import repeated_draws, sampler_draws

    speaker_of_item = np.repeat(np.arange(8), 3)  # 3 utterances, groups of 2: each speaker pads one repeat
    found = False
    for seed in range(20):
        ranks = [BalancedSampler(speaker_of_item, 4, 2, seed=seed, rank=r, world_size=2) for r in range(2)]
        draws = [sampler_draws(r) for r in ranks]
        assert draws[0].shape == (len(ranks[0]) * 4, 2) and repeated_draws(draws) == 0
        found |= bool(set(draws[0][:, 0].tolist()) & set(draws[1][:, 0].tolist()))
        assert repeated_draws([draws[0], draws[0]]) == len(draws[0])
    assert found  # the case the earlier item-count check refused
    epoch = [sampler_draws(EpochSampler(40, 4, seed=1, rank=r, world_size=2)) for r in range(2)]
    assert repeated_draws(epoch) == 0 and repeated_draws([epoch[0], epoch[0][:3]]) == 3
