"""The audio reader (data/audio.py): what every format and shape reads as, and every input it refuses."""

import logging

import numpy as np
import pytest
import soundfile as sf

from data.audio import AudioError, audio_info, load_audio, warn_short
from utils import OncePerProcess

RATE = 16000


def wave(n: int = 1600, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(0, 0.1, n)).astype(np.float32)


@pytest.mark.parametrize("dtype, scale", [(np.int16, 2**15), (np.int32, 2**31)])
def test_integer_npy_is_scaled_by_its_full_range(tmp_path, dtype, scale):
    x = np.round(wave() * scale * 0.5).astype(dtype)
    np.save(tmp_path / "x.npy", x)
    np.testing.assert_allclose(load_audio(tmp_path / "x.npy", RATE), x.astype(np.float64) / scale, rtol=1e-6)


@pytest.mark.parametrize("shape", [(1600, 1), (1, 1600)])
def test_one_channel_2d_npy_reads_as_its_channel(tmp_path, shape):
    np.save(tmp_path / "x.npy", wave().reshape(shape))
    np.testing.assert_array_equal(load_audio(tmp_path / "x.npy", RATE, 100, 200), wave()[100:200])
    assert audio_info(tmp_path / "x.npy", RATE) == 1600


@pytest.mark.parametrize("array, message", [
    (np.stack([wave(), wave(seed=1)]), r"has shape \(samples,\), not \(2, 1600\)"),  # channels first
    (np.stack([wave(), wave(seed=1)], axis=1), r"not \(1600, 2\)"),
    ((wave() * 2**15).astype(np.int64), "not int64"),  # int16 values in int64: would read as silence
    ((wave() * 127 + 128).astype(np.uint8), "not uint8"),
    (np.array(3.0), r"not \(\)"),
])
def test_ambiguous_npy_is_refused_naming_file_and_shape(tmp_path, array, message):
    np.save(tmp_path / "x.npy", array)
    for read in (lambda: load_audio(tmp_path / "x.npy", RATE), lambda: audio_info(tmp_path / "x.npy", RATE)):
        with pytest.raises(AudioError, match=f"x.npy: .*{message}"):
            read()


def test_text_named_npy_is_not_a_pickle_message(tmp_path):
    (tmp_path / "x.npy").write_text("0.1 0.2 0.3\n")
    with pytest.raises(AudioError, match=r"x.npy: not a .npy file \(no NumPy header\)"):
        load_audio(tmp_path / "x.npy", RATE)


@pytest.mark.parametrize("name, write", [
    ("fast.npy", lambda p, x: np.save(p, x)),  # float32 1-D: the pread path
    ("slow.npy", lambda p, x: np.save(p, x.astype(np.float64))),  # the memory-map path
    ("float.wav", lambda p, x: sf.write(p, x, RATE, subtype="FLOAT")),
])
def test_nan_and_inf_samples_are_errors_naming_the_sample(tmp_path, name, write):
    x = wave()
    x[700] = np.nan
    x[900] = np.inf
    write(tmp_path / name, x)
    with pytest.raises(AudioError, match=f"{name}: holds NaN or infinite samples \\(the first at sample 700\\)"):
        load_audio(tmp_path / name, RATE)
    with pytest.raises(AudioError, match="the first at sample 700"):
        load_audio(tmp_path / name, RATE, 600, 800)
    np.testing.assert_array_equal(load_audio(tmp_path / name, RATE, 0, 700), x[:700])  # the finite part reads


def test_a_length_other_than_the_index_says_the_index_is_stale(tmp_path):
    np.save(tmp_path / "x.npy", wave())
    assert len(load_audio(tmp_path / "x.npy", RATE, 0, 100, length=1600)) == 100
    with pytest.raises(AudioError, match="x.npy: 1600 samples, but the corpus index says 3200: the file changed"):
        load_audio(tmp_path / "x.npy", RATE, 0, 100, length=3200)
    sf.write(tmp_path / "x.wav", wave(), RATE)
    with pytest.raises(AudioError, match="x.wav: 1600 samples, but the corpus index says 800"):
        load_audio(tmp_path / "x.wav", RATE, 0, 100, length=800)


def test_low_rate_message_does_not_suggest_a_flag(tmp_path):
    sf.write(tmp_path / "8k.wav", np.zeros(800, dtype=np.int16), 8000)
    with pytest.raises(AudioError, match="8k.wav: sample rate 8000 Hz is below the 16000 Hz the model") as err:
        audio_info(tmp_path / "8k.wav", RATE)
    assert "--sample-rate" not in str(err.value)


def warnings_of(caplog, calls) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="voiceprint"):
        calls()
    return [r.getMessage() for r in caplog.records]


def test_silent_whole_files_and_short_files_are_warned_about_once_in_a_script(tmp_path, caplog):
    np.save(tmp_path / "silent.npy", np.zeros(1600, dtype=np.int16))
    assert not warnings_of(caplog, lambda: load_audio(tmp_path / "silent.npy", RATE, 0, 800))  # a silent segment

    def calls():
        for _ in range(2):  # as a validation pass every epoch
            load_audio(tmp_path / "silent.npy", RATE)
            warn_short({"a.wav": 160, "b.wav": 16000}, RATE, "embedding")

    # a library caller (no run_main) sees every one; a script (run_main's filter) each text once
    assert len(warnings_of(caplog, calls)) == 4
    once = OncePerProcess()
    logging.getLogger("voiceprint").addFilter(once)
    try:
        shown = warnings_of(caplog, calls)
    finally:
        logging.getLogger("voiceprint").removeFilter(once)
    assert [m.split(":")[0] for m in shown] == [str(tmp_path / "silent.npy"), "embedding"]
    assert "every sample is zero" in shown[0]
    assert "1 file(s) shorter than 0.1 s" in shown[1] and "a.wav" in shown[1] and "b.wav" not in shown[1]
    plain = logging.LogRecord("voiceprint", logging.WARNING, "", 0, "a warning without ONCE", None, None)
    assert once.filter(plain) and once.filter(plain)  # passes every time
