"""Corpus layouts, the cached index, the per-speaker cap, label noise and the saved training list
(data/corpus.py)."""

import os
import time
from collections import Counter

import numpy as np
import pytest
import soundfile as sf

import data.corpus
import data.crops
from data.audio import load_audio
from data.corpus import (
    Utterance,
    cap_per_speaker,
    index_cache_path,
    inject_label_noise,
    load_index,
    load_utterance_list,
    save_index,
    scan_corpus,
    speakers_of,
)
from data.crops import TrainDataset
from tests.test_prepare import write_wav_corpus
from utils import UserError

RATE = 16000


def write_corpus(root, speakers=3, utts=4, seconds=0.5):
    rng = np.random.default_rng(0)
    for s in range(speakers):
        for u in range(utts):
            path = root / f"id{s:03d}" / f"sess{u % 2}" / f"{u:05d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, (rng.normal(0, 0.1, int(16000 * seconds)) * 32767).astype(np.int16), 16000)
    return root


def backdate(root, seconds=60):
    """Age every folder past the index's 2 s racy window, as an untouched corpus would be."""
    past = time.time() - seconds
    for folder, _, _ in os.walk(root):
        os.utime(folder, (past, past))


def make_utts(speakers=10, per_speaker=20):
    return [Utterance(f"s{s}/{u}.wav", f"/x/s{s}/{u}.wav", f"s{s}")
            for s in range(speakers) for u in range(per_speaker)]


# --- layouts -------------------------------------------------------------------------------------------

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


def test_missing_corpus(tmp_path):
    with pytest.raises(UserError, match="no such corpus folder"):
        scan_corpus(tmp_path / "missing")


# --- index cache ---------------------------------------------------------------------------------------

def test_index_has_lengths_and_second_load_is_cached(tmp_path, monkeypatch):
    root = write_wav_corpus(tmp_path / "wav")
    backdate(root)
    first = load_index(root, RATE)
    assert [(u.key, u.path, u.speaker) for u in first] == [(u.key, u.path, u.speaker) for u in scan_corpus(root)]
    assert [u.num_samples for u in first] == [len(sf.read(u.path)[0]) for u in first]
    assert index_cache_path(root, RATE).is_file() and index_cache_path(root, RATE).parent == root

    def no_header_reads(*args, **kwargs):
        raise AssertionError("audio_info called")

    monkeypatch.setattr(data.corpus, "audio_info", no_header_reads)
    monkeypatch.setattr(data.crops, "audio_info", no_header_reads)
    assert load_index(root, RATE) == first  # from the cache
    ds = TrainDataset(first, speakers_of(first), 4000, RATE)
    assert ds[(0, 1)][0].shape == (4000,)  # the known length spares the header read
    with pytest.raises(AssertionError, match="audio_info"):
        load_index(root, RATE, rescan=True)


def test_changes_invalidate_the_cache(tmp_path):
    root = write_wav_corpus(tmp_path / "wav")
    backdate(root, 120)
    assert len(load_index(root, RATE)) == 6
    sf.write(root / "id01" / "v1" / "new.wav", np.ones(500, dtype=np.int16), RATE)
    backdate(root / "id01" / "v1", 60)  # its folder's new mtime, old enough to be cached
    utts = load_index(root, RATE)
    assert len(utts) == 7 and utts[-1].num_samples == 500
    assert load_index(root, RATE) == utts  # cached again
    (root / "id02").mkdir()
    sf.write(root / "id02" / "x.wav", np.ones(300, dtype=np.int16), RATE)
    backdate(root / "id02", 30)  # a new speaker: only the listing of the root shows it
    assert [u.speaker for u in load_index(root, RATE)][-1] == "id02"


def test_index_of_a_kaldi_folder_and_a_separate_cache_dir(tmp_path, monkeypatch):
    root = tmp_path / "kaldi"
    root.mkdir()
    sf.write(root / "a.wav", np.ones(1000, dtype=np.int16), RATE)
    np.save(root / "b.npy", np.ones(1500, dtype=np.int16))
    (root / "wav.scp").write_text("a a.wav\nb b.npy\n")
    (root / "utt2spk").write_text("a s1\nb s2\n")
    past = time.time() - 60
    for name in ("wav.scp", "utt2spk"):
        os.utime(root / name, (past, past))
    cache_dir = tmp_path / "cache"
    utts = load_index(root, RATE, cache_dir=cache_dir)
    assert [(u.key, u.num_samples) for u in utts] == [("a", 1000), ("b", 1500)]
    assert len(list(cache_dir.iterdir())) == 1 and not (root / ".voiceprint").exists()
    monkeypatch.chdir(tmp_path)  # another spelling of the same root finds the same cache
    assert load_index("kaldi", RATE, cache_dir=cache_dir)[0].path == "kaldi/a.wav"
    (root / "utt2spk").write_text("a s1\nb s3\n")
    assert load_index(root, RATE, cache_dir=cache_dir)[1].speaker == "s3"


def test_unwritable_root_caches_under_home(tmp_path, monkeypatch):
    root = write_wav_corpus(tmp_path / "wav", speakers=1, utts=1)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    cache = index_cache_path(root, RATE)
    assert cache.parent == tmp_path / "xdg" / "voiceprint"


# --- per-speaker cap, label noise ----------------------------------------------------------------------

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


# --- the training list ---------------------------------------------------------------------------------

def test_utterance_list_round_trips_through_save_index(tmp_path):
    utts = [Utterance("id00/v0/000.wav", str(tmp_path / "id00/v0/000.wav"), "id00", 4800),
            Utterance("utt-b", "/abs/b.npy", "spk é\t2"), *make_utts(speakers=2, per_speaker=3)]
    save_index(utts, tmp_path / "train_list.jsonl")
    assert load_utterance_list(tmp_path / "train_list.jsonl") == utts
    (tmp_path / "empty.jsonl").write_text("")
    assert load_utterance_list(tmp_path / "empty.jsonl") == []


def test_utterance_list_errors_name_the_file_and_line(tmp_path):
    with pytest.raises(UserError, match=r"none.jsonl: missing$"):
        load_utterance_list(tmp_path / "none.jsonl")
    path = tmp_path / "list.jsonl"
    save_index(make_utts(speakers=1, per_speaker=2), path)
    good = path.read_text()
    for bad in ('{"key": "a", "path": "b"', "not json", '["a", "b", "c", 0]', '{"key": "a", "path": "b"}',
                '{"key": "a", "path": "b", "speaker": "c", "extra": 1}', '{"key": "a", "path": "b", "speaker": 3}',
                '{"key": "a", "path": "b", "speaker": "c", "num_samples": "9"}'):
        path.write_text(good + "\n" + bad + "\n")
        with pytest.raises(UserError, match=r"list.jsonl:4: expected a JSON object") as err:
            load_utterance_list(path)
        assert "\n" not in str(err.value)
