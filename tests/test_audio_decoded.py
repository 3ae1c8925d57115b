"""Compressed audio (data/audio.py): .m4a (AAC, VoxCeleb2's format) through PyAV, .mp3 / .ogg through
libsndfile; data.prepare converting an .m4a tree; the errors of a corrupt file and of a missing PyAV."""

import sys

import numpy as np
import pytest
import soundfile as sf

from data.audio import AudioError, audio_info, load_audio
from data.prepare import prepare_corpus
from tests.conftest import write_m4a

av = pytest.importorskip("av")
RATE = 16000


def tone(seconds: float, rate: int = RATE, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def best_correlation(x: np.ndarray, reference: np.ndarray, max_lag: int = 3000) -> float:
    """Largest normalised correlation of x against the reference over the codec's delays 0..max_lag."""
    n = len(reference) - max_lag
    return max(float(np.dot(x[lag:lag + n], reference[:n]) / (np.linalg.norm(x[lag:lag + n]) *
                                                             np.linalg.norm(reference[:n]) + 1e-12))
               for lag in range(0, max_lag, 16))


@pytest.mark.parametrize("rate", [16000, 44100])
def test_m4a_reads_as_its_audio_at_the_model_rate(tmp_path, rate):
    path = write_m4a(tmp_path / "x.m4a", tone(1.0, rate), rate)
    x = load_audio(path, RATE)
    assert abs(len(x) - RATE) <= 0.15 * RATE  # AAC adds a frame or two of priming and padding
    assert audio_info(path, RATE) == len(x) or abs(audio_info(path, RATE) - len(x)) <= 1
    assert best_correlation(x, tone(1.0)) > 0.99
    np.testing.assert_array_equal(load_audio(path, RATE, 1000, 3000), x[1000:3000])


@pytest.mark.parametrize("suffix, subtype", [(".ogg", "VORBIS"), (".mp3", "MPEG_LAYER_III")])
def test_ogg_and_mp3_read_through_libsndfile(tmp_path, suffix, subtype):
    if subtype not in sf.available_subtypes(suffix[1:].upper() if suffix == ".ogg" else "MP3"):
        pytest.skip(f"this libsndfile has no {subtype} encoder")
    sf.write(tmp_path / f"x{suffix}", tone(1.0), RATE, subtype=subtype)
    assert best_correlation(load_audio(tmp_path / f"x{suffix}", RATE), tone(1.0)) > 0.99


def test_a_corrupt_m4a_is_one_line_naming_it_and_prepare_lists_it(tmp_path):
    src = tmp_path / "aac"
    for spk in ("id00012", "id00015"):
        for i in range(2):
            write_m4a(src / spk / "vid" / f"{i + 1:05d}.m4a", tone(0.5, hz=200 + 100 * i))
    (src / "id00015/vid/00003.m4a").write_bytes(b"\0\0\0\x18ftypM4A junk")
    with pytest.raises(AudioError, match=r"id00015/vid/00003.m4a: cannot decode"):
        load_audio(src / "id00015/vid/00003.m4a", RATE)
    result = prepare_corpus(src, tmp_path / "npy", RATE, workers=2, skip_bad=True)
    assert result.converted == 4 and len(result.bad) == 1 and "00003.m4a: cannot decode" in result.bad[0]
    assert "00003.m4a" in (tmp_path / "npy/bad_files.txt").read_text()
    saved = np.load(tmp_path / "npy/id00012/vid/00001.npy")
    assert saved.dtype == np.int16 and best_correlation(saved / 32768.0, tone(0.5, hz=200), 2000) > 0.99
    assert prepare_corpus(src, tmp_path / "npy", RATE, workers=2, skip_bad=True).converted == 0  # resumable


def test_without_pyav_an_m4a_says_how_to_install_it(tmp_path, monkeypatch):
    path = write_m4a(tmp_path / "x.m4a", tone(0.2))
    monkeypatch.setitem(sys.modules, "av", None)  # import av now raises ImportError
    with pytest.raises(AudioError, match=r"x.m4a: reading .m4a needs PyAV, .*: pip install av"):
        load_audio(path, RATE)
