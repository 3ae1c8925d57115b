"""Training-crop augmentation: MUSAN noise, music and babble, and RIR reverberation (data/augment.py)."""

from collections import Counter

import numpy as np
import pytest
import soundfile as sf

from data.augment import Augmenter, build_augmenter, reverberate
from utils import UserError

RATE = 16000


def write(path, wave):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.clip(wave * 32767, -32768, 32767).astype(np.int16), RATE)


def speech_like(num_samples, seed=0):
    """Noise under a syllable-rate envelope: uneven power, like speech."""
    rng = np.random.default_rng(seed)
    envelope = 0.2 + np.abs(np.sin(np.arange(num_samples) * 2 * np.pi * 4 / RATE))
    return (rng.normal(0, 0.1, num_samples) * envelope).astype(np.float32)


def write_musan(root):
    """A tiny MUSAN folder, root/musan: noise (one file shorter than a crop), music, speech."""
    rng = np.random.default_rng(1)
    write(root / "musan" / "noise" / "free-sound" / "short.wav", rng.normal(0, 0.3, RATE // 2))  # < a crop
    write(root / "musan" / "noise" / "sound-bible" / "long.wav", rng.normal(0, 0.05, 3 * RATE))
    t = np.arange(2 * RATE) / RATE
    chord = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 330 * t)
    write(root / "musan" / "music" / "m0.wav", chord)
    for i in range(4):
        write(root / "musan" / "speech" / f"s{i}.wav", speech_like(RATE, seed=10 + i) * (i + 1))
    return root / "musan"


@pytest.fixture
def musan(tmp_path):
    return write_musan(tmp_path)


def synthetic_rir(delay=40, length=3000, seed=0):
    """A direct path at `delay` then exponentially decaying noise (the reverberant tail), the direct path the
    largest tap."""
    rng = np.random.default_rng(seed)
    rir = np.zeros(length)
    tail = np.arange(length - delay - 1)
    rir[delay + 1:] = np.clip(0.3 * rng.normal(0, 1, len(tail)) * np.exp(-tail / 400), -0.6, 0.6)
    rir[delay] = 0.9
    return rir


@pytest.fixture
def rirs(tmp_path):
    for i, delay in enumerate((40, 200)):
        write(tmp_path / "rirs" / "room" / f"sub{i}" / f"r{i}.wav", synthetic_rir(delay, seed=i))
    return tmp_path / "rirs"


def snr_db(clean, mixed):
    noise = mixed.astype(np.float64) - clean
    return 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise**2))


# --- augmentation ---------------------------------------------------------------------------------------

def test_additive_noise_snr_is_within_its_range(musan):
    ranges = {"noise": (0.0, 15.0), "music": (5.0, 8.0), "babble": (13.0, 20.0)}
    aug = Augmenter(str(musan), None, RATE, 1.0, noise_snr=ranges["noise"], music_snr=ranges["music"],
                    babble_snr=ranges["babble"], babble_speakers=(2, 4))
    assert aug.kinds == ("noise", "music", "babble")
    wave = speech_like(RATE)
    for kind, (low, high) in ranges.items():
        measured = [snr_db(wave, aug.apply(kind, wave, np.random.default_rng(seed))) for seed in range(12)]
        assert low - 0.05 <= min(measured) and max(measured) <= high + 0.05, (kind, measured)
        assert max(measured) - min(measured) > (high - low) / 4  # drawn from the range, not a constant


def test_reverb_keeps_length_alignment_and_level(rirs):
    aug = Augmenter(None, str(rirs), RATE, 1.0)
    assert aug.kinds == ("reverb",) and len(aug.files["reverb"]) == 2
    click = np.zeros(8000, dtype=np.float32)
    click[3000] = 1.0
    wave = speech_like(8000)
    for seed in range(4):
        out = aug.apply("reverb", click, np.random.default_rng(seed))
        assert out.shape == click.shape and out.dtype == np.float32 and int(np.argmax(np.abs(out))) == 3000
        out = aug.apply("reverb", wave, np.random.default_rng(seed))
        lag = int(np.argmax(np.correlate(out, wave, mode="full"))) - (len(wave) - 1)
        assert lag == 0 and 0.5 < np.mean(out**2) / np.mean(wave**2) < 2.0
    with pytest.raises(UserError, match="silent"):
        reverberate(wave, np.zeros(100))


def test_disabled_augmentation_is_a_noop(musan, rirs):
    wave = speech_like(4000)
    assert build_augmenter(None, "", RATE, 0.6) is None
    assert build_augmenter(str(musan), str(rirs), RATE, 0.0) is None
    noop = Augmenter(None, "", RATE, 1.0)
    assert noop.kinds == () and np.array_equal(noop(wave, np.random.default_rng(0)), wave)
    never = Augmenter(str(musan), str(rirs), RATE, 0.0)
    assert all(np.array_equal(never(wave, np.random.default_rng(s)), wave) for s in range(5))


def test_augmentation_is_deterministic_and_uses_every_kind(musan, rirs):
    aug = build_augmenter(str(musan), str(rirs), RATE, 0.5)
    wave = speech_like(4000)
    a, b = aug(wave, np.random.default_rng(7)), aug(wave, np.random.default_rng(7))
    assert np.array_equal(a, b) and a.shape == wave.shape and a.dtype == np.float32
    outs = [aug(wave, np.random.default_rng(s)) for s in range(40)]
    changed = sum(not np.array_equal(o, wave) for o in outs)
    assert 10 < changed < 30  # about prob * 40
    kinds = Counter()
    apply = aug.apply
    aug.apply = lambda kind, w, rng: kinds.update([kind]) or apply(kind, w, rng)
    aug.prob = 1.0
    for s in range(80):
        aug(wave, np.random.default_rng(s))
    assert set(kinds) == {"noise", "music", "babble", "reverb"} and min(kinds.values()) > 8


def test_missing_or_empty_folders_are_one_line_errors(tmp_path, musan):
    (tmp_path / "empty" / "noise").mkdir(parents=True)
    cases = [((str(tmp_path / "nope"), None), "nope: musan: no such folder"),
             ((str(tmp_path / "empty"), None), "empty: musan: no audio files"),
             ((None, str(tmp_path / "empty")), "empty: rirs: no room impulse responses"),
             ((None, str(tmp_path / "gone")), "gone: rirs: no such folder")]
    for folders, message in cases:
        with pytest.raises(UserError, match=message) as err:
            Augmenter(*folders, RATE, 0.5)
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="noise_snr"):
        Augmenter(str(musan), None, RATE, 0.5, noise_snr=(10, 5))
