"""Corpus conversion to .npy (data/prepare.py) and the fast .npy reads it is for (data/audio.py)."""

import os

import numpy as np
import pytest
import soundfile as sf

import data.crops
from data.audio import audio_info, load_audio
from data.corpus import scan_corpus, speakers_of
from data.crops import TrainDataset
from data.prepare import main, prepare_corpus
from utils import UserError

RATE = 16000


def write_wav_corpus(root, speakers=2, utts=3, seconds=0.3, fmt="wav"):
    rng = np.random.default_rng(0)
    for s in range(speakers):
        for u in range(utts):
            path = root / f"id{s:02d}" / f"v{u % 2}" / f"{u:03d}.{fmt}"
            path.parent.mkdir(parents=True, exist_ok=True)
            samples = int(RATE * seconds) + 100 * u
            sf.write(path, (rng.normal(0, 0.1, samples) * 32767).astype(np.int16), RATE)
    return root


# --- conversion -----------------------------------------------------------------------------------------

def test_prepare_mirrors_layout_and_crops_match(tmp_path):
    src = write_wav_corpus(tmp_path / "wav")
    sf.write(src / "id01" / "extra.flac", np.zeros(2000, dtype=np.int16) + 7, RATE)
    result = prepare_corpus(src, tmp_path / "npy", RATE)
    assert (result.converted, result.existing, result.bad) == (7, 0, [])
    wav, npy = scan_corpus(src), scan_corpus(tmp_path / "npy")
    assert [u.key.rsplit(".", 1)[0] for u in wav] == [u.key.removesuffix(".npy") for u in npy]
    assert np.load(npy[0].path).dtype == np.int16
    wav_ds = TrainDataset(wav, speakers_of(wav), 8000, RATE)
    npy_ds = TrainDataset(npy, speakers_of(npy), 8000, RATE)
    for item in [(i, 100 + i) for i in range(len(wav))]:
        (a, label_a), (b, label_b) = wav_ds[item], npy_ds[item]
        assert label_a == label_b and np.array_equal(a.numpy(), b.numpy())


def test_prepare_is_resumable_and_refuses_another_rate(tmp_path):
    src = write_wav_corpus(tmp_path / "wav")
    prepare_corpus(src, tmp_path / "npy", RATE)
    first = sorted(p.stat().st_mtime_ns for p in (tmp_path / "npy").rglob("*.npy"))
    result = prepare_corpus(src, tmp_path / "npy", RATE)
    assert (result.converted, result.existing) == (0, 6)
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "npy").rglob("*.npy")) == first
    assert not list((tmp_path / "npy").rglob("*.tmp"))
    umask = os.umask(0o022)
    os.umask(umask)
    assert {p.stat().st_mode & 0o777 for p in (tmp_path / "npy").rglob("*.npy")} == {0o666 & ~umask}  # shareable
    with pytest.raises(UserError, match="prepared at 16000 Hz"):
        prepare_corpus(src, tmp_path / "npy", 8000)


def test_prepare_kaldi_input(tmp_path):
    src = tmp_path / "kaldi"
    (src / "audio").mkdir(parents=True)
    wave = (np.arange(4000) % 300 - 150).astype(np.int16)
    sf.write(src / "audio" / "a.wav", wave, RATE)
    sf.write(src / "audio" / "b.flac", wave[::-1], RATE)
    (src / "wav.scp").write_text("utt-a audio/a.wav\nspk2/utt-b audio/b.flac\n")
    (src / "utt2spk").write_text("utt-a spk1\nspk2/utt-b spk2\n")
    result = prepare_corpus(src, tmp_path / "npy", RATE, workers=2)
    assert result.converted == 2
    dst = tmp_path / "npy"
    assert (dst / "utt-a.npy").is_file() and (dst / "spk2" / "utt-b.npy").is_file()
    assert (dst / "wav.scp").read_text() == "spk2/utt-b spk2/utt-b.npy\nutt-a utt-a.npy\n"
    utts = scan_corpus(dst)
    assert [(u.key, u.speaker) for u in utts] == [("spk2/utt-b", "spk2"), ("utt-a", "spk1")]
    np.testing.assert_array_equal(np.load(dst / "utt-a.npy"), wave)


def test_unreadable_input_is_one_line_error_or_skipped(tmp_path, caplog):
    src = write_wav_corpus(tmp_path / "wav")
    bad = src / "id00" / "v0" / "broken.wav"
    bad.write_bytes(b"not a wav file")
    with pytest.raises(UserError, match="broken.wav") as err:
        prepare_corpus(src, tmp_path / "npy", RATE)
    assert "\n" not in str(err.value)
    result = prepare_corpus(src, tmp_path / "npy2", RATE, skip_bad=True)
    assert result.converted == 6 and len(result.bad) == 1 and "broken.wav" in result.bad[0]
    assert "broken.wav" in (tmp_path / "npy2" / "bad_files.txt").read_text()
    assert "broken.wav" in caplog.text


def test_command_line(tmp_path):
    src = write_wav_corpus(tmp_path / "wav", speakers=1, utts=2)
    main([str(src), str(tmp_path / "npy"), "--sample-rate", "16000", "--workers", "1"])
    assert len(scan_corpus(tmp_path / "npy")) == 2
    with pytest.raises(UserError, match="outside the source"):
        main([str(src), str(src / "npy")])


def test_fast_npy_reads_equal_the_audio_reader(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    plain = {"int16": rng.normal(0, 3000, 5000).astype(np.int16),
             "float32": rng.normal(0, 0.1, 5000).astype(np.float32)}
    other = {"mono_2d": rng.integers(-99, 99, (5000, 1)).astype(np.int16), "big_endian": np.arange(5000, dtype=">i2"),
             "int32": np.arange(5000, dtype=np.int32)}  # these take data.audio's path
    cuts = ((0, None), (123, 4000), (4990, 6000))
    expected = {}
    for name, array in {**plain, **other}.items():
        path = str(tmp_path / f"{name}.npy")
        np.save(path, array)
        expected[name] = [load_audio(path, RATE, start, stop) for start, stop in cuts]
        assert audio_info(path, RATE) == audio_info(path, RATE) == 5000
        assert all(np.array_equal(load_audio(path, RATE, *cut), e) for cut, e in zip(cuts, expected[name]))

    def no_audio_module(*args):
        raise AssertionError("data.audio called")

    monkeypatch.setattr(data.crops, "load_audio", no_audio_module)
    monkeypatch.setattr(data.crops, "audio_info", no_audio_module)
    for name in plain:
        path = str(tmp_path / f"{name}.npy")
        assert audio_info(path, RATE) == 5000
        for cut, e in zip(cuts, expected[name]):
            got = load_audio(path, RATE, *cut)
            assert got.dtype == np.float32 and got.flags.writeable and np.array_equal(got, e)
    monkeypatch.undo()
    truncated = tmp_path / "truncated.npy"
    truncated.write_bytes((tmp_path / "int16.npy").read_bytes()[:-100])
    for read in (lambda: audio_info(str(truncated), RATE), lambda: load_audio(str(truncated), RATE, 0, 10)):
        with pytest.raises(UserError, match="truncated.npy"):
            read()
    with pytest.raises(UserError, match="empty audio"):
        load_audio(str(tmp_path / "int16.npy"), RATE, 6000, 7000)
