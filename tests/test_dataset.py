"""Corpus layouts, crops, the per-speaker cap, label noise and the epoch sampler."""

from collections import Counter

import numpy as np
import soundfile as sf

from data.audio import load_audio
from data.dataset import (
    EpochSampler,
    TrainDataset,
    Utterance,
    cap_per_speaker,
    crop_bounds,
    inject_label_noise,
    random_crop,
    read_trials,
    scan_corpus,
    speakers_of,
    wrap_pad,
)


def write_corpus(root, speakers=3, utts=4, seconds=0.5):
    rng = np.random.default_rng(0)
    for s in range(speakers):
        for u in range(utts):
            path = root / f"id{s:03d}" / f"sess{u % 2}" / f"{u:05d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, (rng.normal(0, 0.1, int(16000 * seconds)) * 32767).astype(np.int16), 16000)
    return root


def test_voxceleb_layout(tmp_path):
    utts = scan_corpus(write_corpus(tmp_path))
    assert len(utts) == 12 and speakers_of(utts) == ["id000", "id001", "id002"]
    assert utts[0].key == "id000/sess0/00000.wav" and utts[0].speaker == "id000"


def test_kaldi_layout_and_npy(tmp_path):
    wave = (np.arange(3200) % 100).astype(np.int16)
    np.save(tmp_path / "a.npy", wave)
    sf.write(tmp_path / "b.wav", wave, 16000)
    (tmp_path / "wav.scp").write_text("utt-a a.npy\nutt-b b.wav\n")
    (tmp_path / "utt2spk").write_text("utt-a spk1\nutt-b spk2\n")
    utts = scan_corpus(tmp_path)
    assert [(u.key, u.speaker) for u in utts] == [("utt-a", "spk1"), ("utt-b", "spk2")]
    np.testing.assert_array_equal(load_audio(utts[0].path, 16000), load_audio(utts[1].path, 16000))
    np.testing.assert_array_equal(load_audio(utts[0].path, 16000, 100, 200), wave[100:200] / 32768.0)


def test_crop_has_exact_length_for_short_and_long_input(tmp_path):
    rng = np.random.default_rng(0)
    for n in (400, 32240, 50000):
        path = tmp_path / f"{n}.wav"
        sf.write(path, (np.arange(n) % 1000).astype(np.int16), 16000)
        crop = random_crop(str(path), 32240, 16000, rng)
        assert crop.shape == (32240,) and crop.dtype == np.float32
    short = np.arange(5, dtype=np.float32)
    np.testing.assert_array_equal(wrap_pad(short, 12), [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1])
    starts = {crop_bounds(100, 10, rng)[0] for _ in range(2000)}
    assert min(starts) == 0 and max(starts) == 90  # both ends reachable, never past the end


def make_utts(speakers=10, per_speaker=20):
    return [Utterance(f"s{s}/{u}.wav", f"/x/s{s}/{u}.wav", f"s{s}")
            for s in range(speakers) for u in range(per_speaker)]


def test_cap_per_speaker_is_seeded_and_exact():
    utts = make_utts()
    capped = cap_per_speaker(utts, 7, seed=1)
    assert Counter(u.speaker for u in capped) == {f"s{s}": 7 for s in range(10)}
    assert capped == cap_per_speaker(utts, 7, seed=1) and capped != cap_per_speaker(utts, 7, seed=2)
    assert cap_per_speaker(utts, 0, seed=1) == utts and len(cap_per_speaker(utts, 50, seed=1)) == 200


def test_label_noise_moves_exact_fraction_to_other_speakers():
    utts = make_utts()
    noisy, moved = inject_label_noise(utts, 0.2, seed=3)
    changed = [(a, b) for a, b in zip(utts, noisy) if a.speaker != b.speaker]
    assert len(moved) == len(changed) == 40
    assert all(m.true_speaker != m.assigned_speaker for m in moved)
    assert {m.key for m in moved} == {a.key for a, _ in changed}
    assert [u.key for u in noisy] == [u.key for u in utts]  # files unchanged, only labels
    assert inject_label_noise(utts, 0.2, seed=3) == (noisy, moved)
    assert inject_label_noise(utts, 0.0, seed=3) == (utts, [])
    assigned = Counter(m.assigned_speaker for m in moved)
    assert len(assigned) > 5  # spread over speakers, not all to one


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
    s.set_epoch(0, start_batch=5)
    assert list(s) == epoch0[5:]
    ranks = [EpochSampler(100, 8, seed=0, rank=r, world_size=2) for r in range(2)]
    seen = [{i for b in r for i, _ in b} for r in ranks]
    assert len(ranks[0]) == 6 and not seen[0] & seen[1]


def test_dataset_item_is_a_function_of_its_seed(tmp_path):
    utts = scan_corpus(write_corpus(tmp_path, seconds=3.0))
    ds = TrainDataset(utts, speakers_of(utts), 16000, 16000)
    a, label = ds[(5, 1234)]
    b, _ = ds[(5, 1234)]
    c, _ = ds[(5, 99)]
    assert a.shape == (16000,) and label == 1
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_trial_formats(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("1 a b\n0 a c\n")
    vox = read_trials(path)
    path.write_text("a b target\na c nontarget\n")
    assert read_trials(path) == vox and [t.label for t in vox] == [1, 0]
