"""Random crops, speed perturbation and the training dataset (data/crops.py)."""

from collections import Counter

import numpy as np
import pytest
import soundfile as sf

from data.augment import build_augmenter
from data.corpus import scan_corpus, speakers_of
from data.crops import TrainDataset, crop_bounds, random_crop, speed_perturb, speed_speakers, wrap_pad
from tests.test_augment import RATE, speech_like, write, write_musan
from tests.test_corpus import write_corpus


@pytest.fixture
def musan(tmp_path):
    return write_musan(tmp_path)


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


def test_dataset_item_is_a_function_of_its_seed(tmp_path):
    utts = scan_corpus(write_corpus(tmp_path, seconds=3.0))
    ds = TrainDataset(utts, speakers_of(utts), 16000, 16000)
    a, label = ds[(5, 1234)]
    b, _ = ds[(5, 1234)]
    c, _ = ds[(5, 99)]
    assert a.shape == (16000,) and label == 1
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# --- speed perturbation --------------------------------------------------------------------------------

def test_speed_perturb_changes_length_and_pitch():
    tone = np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE).astype(np.float32)
    for factor, length in ((1.1, 14546), (0.9, 17778), (1.0, RATE)):
        out = speed_perturb(tone, factor)
        peak_hz = np.argmax(np.abs(np.fft.rfft(out))) * RATE / len(out)
        assert len(out) == length and abs(peak_hz - 440 * factor) < 3


def test_speed_perturbed_items_have_exact_length_and_tripled_labels(tmp_path, musan):
    for s in range(2):
        write(tmp_path / "c" / f"spk{s}" / "long.wav", speech_like(RATE, seed=s))
        write(tmp_path / "c" / f"spk{s}" / "short.wav", speech_like(RATE // 5, seed=5 + s))  # shorter than a crop
    utts = scan_corpus(tmp_path / "c")
    speakers = speakers_of(utts)
    assert speed_speakers(speakers) == ["spk0", "spk0_sp0.9", "spk0_sp1.1", "spk1", "spk1_sp0.9", "spk1_sp1.1"]
    ds = TrainDataset(utts, speakers, 8000, RATE, augment=build_augmenter(str(musan), None, RATE, 0.5),
                      speed_perturb=True)
    speeds = Counter()
    for index in range(len(ds)):
        for seed in range(12):
            wave, label = ds[(index, seed)]
            assert wave.shape == (8000,) and wave.dtype.is_floating_point
            assert label // 3 == speakers.index(utts[index].speaker)
            speeds[label % 3] += 1
    assert set(speeds) == {0, 1, 2}
    assert all(np.array_equal(ds[(1, s)][0], ds[(1, s)][0]) for s in range(3))  # a pure function of the seed
