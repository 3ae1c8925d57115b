"""Bad input gives a one-line error naming the file and the problem, never a traceback."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data.audio import AudioError, audio_info, load_audio

ROOT = Path(__file__).resolve().parents[1]


def test_missing_and_empty_and_unreadable_audio(tmp_path):
    with pytest.raises(AudioError, match="no such audio file"):
        load_audio(tmp_path / "nope.wav", 16000)
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.int16), 16000)
    with pytest.raises(AudioError, match="empty.wav: empty audio"):
        audio_info(tmp_path / "empty.wav", 16000)
    (tmp_path / "junk.wav").write_bytes(b"not a riff file at all")
    with pytest.raises(AudioError, match="junk.wav: cannot read audio"):
        load_audio(tmp_path / "junk.wav", 16000)
    (tmp_path / "junk.npy").write_bytes(b"garbage")
    with pytest.raises(AudioError, match="junk.npy: cannot read"):
        load_audio(tmp_path / "junk.npy", 16000)


def test_low_sample_rate_is_rejected_high_is_resampled(tmp_path):
    sf.write(tmp_path / "8k.wav", np.zeros(8000, dtype=np.int16), 8000)
    with pytest.raises(AudioError, match="8k.wav: sample rate 8000 Hz is below the configured 16000 Hz"):
        load_audio(tmp_path / "8k.wav", 16000)
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(44100) / 44100)).astype(np.float32)
    sf.write(tmp_path / "44k.wav", tone, 44100)
    wave = load_audio(tmp_path / "44k.wav", 16000)
    assert len(wave) == 16000 and audio_info(tmp_path / "44k.wav", 16000) == 16000
    assert abs(np.abs(wave).max() - 0.5) < 0.01


@pytest.mark.parametrize("args, message", [
    (["--train-data", "/nonexistent/corpus", "--val-trials", ""], "/nonexistent/corpus: no such corpus folder"),
    (["--epoch", "3"], "unknown flag '--epoch'; did you mean 'epochs'?"),
])
def test_train_script_prints_one_line(tmp_path, args, message):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--exp-dir", str(tmp_path), *args],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()
    assert message in last[-1] and "Traceback" not in proc.stderr


def test_inference_without_experiment(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "inference.py"), "--exp-dir", str(tmp_path / "none")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "no trained experiment" in proc.stderr and "Traceback" not in proc.stderr
