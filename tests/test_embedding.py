"""Embedding extraction (batching, crops, cache) on generated files and a small random ECAPA-TDNN."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import embedding
from config import Config
from data.audio import load_audio
from data.crops import wrap_pad
from data.features import frontend_from_config
from embedding import Embedder, Extraction
from models import build_model

SR = 16000


@pytest.fixture(scope="module")
def tiny():
    """A small random ECAPA-TDNN (eval mode) and the default front end, on the CPU in fp32, one thread (as
    the script tests below ask with --threads 1; a shared CPU runs it faster than two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield build_model("ecapa_tdnn", n_mels=80, channels=16).eval(), frontend_from_config(Config())
    torch.set_num_threads(threads)


def write_waves(folder: Path, lengths: dict[str, int], seed: int = 0) -> dict[str, str]:
    rng = np.random.default_rng(seed)
    paths = {}
    for key, n in lengths.items():
        path = folder / f"{key}.wav"
        sf.write(path, (0.1 * rng.normal(size=n)).astype(np.float32), SR, subtype="PCM_16")
        paths[key] = str(path)
    return paths


def embedder(tiny, **extraction) -> Embedder:
    return Embedder(*tiny, torch.device("cpu"), "fp32", Extraction(**extraction))


def embed(tiny, paths, **extraction):
    return embedder(tiny, **extraction).extract(paths)


def test_batches_of_equal_frame_counts_match_one_by_one(tmp_path, tiny):
    # 19200 and 19250 samples give the same 118 frames (the last 50 samples fall in no frame); 4000 samples is
    # shorter than MIN_EVAL_FRAMES and is wrap-padded; 25000 is alone in its batch
    lengths = {"a": 19200, "b": 19200, "c": 19250, "d": 25000, "e": 4000, "f": 19200}
    paths = write_waves(tmp_path, lengths)
    one = embed(tiny, paths, batch_size=1)
    batched = embed(tiny, paths, batch_size=8)
    assert list(batched) == list(paths)
    for key in paths:
        assert np.linalg.norm(batched[key]) == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(batched[key], one[key], atol=2e-5)
    run = embedder(tiny, batch_size=8)
    assert run.full_length_batches(lengths) == [["d"], ["a", "b", "c", "f"], ["e"]]


def test_bucket_crop_batches_within_the_tolerance_and_cuts_to_the_shortest(tmp_path, tiny):
    frames = {"a": 100, "b": 98, "c": 95, "d": 90, "e": 80}
    lengths = {k: (t - 1) * 160 + 400 for k, t in frames.items()}  # exactly t frames each
    run = embedder(tiny, batch_size=16, bucket_crop=0.1)
    assert run.full_length_batches(lengths) == [["a", "b", "c", "d"], ["e"]]  # 90 >= 0.9 * 100 > 80
    exact = embedder(tiny, batch_size=16)
    assert exact.full_length_batches(lengths) == [["a"], ["b"], ["c"], ["d"], ["e"]]
    paths = write_waves(tmp_path, lengths)
    cut = embed(tiny, paths, batch_size=16, bucket_crop=0.1)
    one = embed(tiny, paths, batch_size=1)
    np.testing.assert_allclose(cut["d"], one["d"], atol=2e-5)  # the shortest of its batch: whole
    np.testing.assert_allclose(cut["e"], one["e"], atol=2e-5)  # alone
    wave = load_audio(paths["a"], SR)
    centred = wave[5 * 160:5 * 160 + lengths["d"]]  # 100 -> 90 frames: 5 dropped at each end
    np.testing.assert_allclose(cut["a"], run.forward([centred])[0], atol=2e-5)
    assert not np.allclose(cut["a"], one["a"], atol=1e-3)


def test_crops_are_evenly_spaced_and_averaged(tmp_path, tiny):
    paths = write_waves(tmp_path, {"long": 40000, "short": 9000})
    run = embedder(tiny, crops=3, crop_frames=100, batch_size=4)
    window = 99 * 160 + 400
    assert run.crop_starts(40000) == [0, round((40000 - window) / 2), 40000 - window]
    assert run.crop_starts(9000) == [0]  # shorter than a crop: one, wrap-padded
    got = embed(tiny, paths, crops=3, crop_frames=100, batch_size=4)
    wave = load_audio(paths["long"], SR)
    crops = run.forward([wave[s:s + window] for s in run.crop_starts(40000)])
    mean = crops.mean(0)
    np.testing.assert_allclose(got["long"], mean / np.linalg.norm(mean), atol=2e-5)
    short = wrap_pad(load_audio(paths["short"], SR), window)
    np.testing.assert_allclose(got["short"], run.forward([short])[0], atol=2e-5)


def test_embedding_cache_embeds_each_file_once(tmp_path, tiny, monkeypatch):
    paths = write_waves(tmp_path, {"a": 12000, "b": 15000, "c": 16000})
    cached = Embedder(*tiny, torch.device("cpu"), "fp32", Extraction(), tmp_path / "cache", "best", "abc")
    calls, real = [], Embedder.extract

    def counting(self, paths, lengths=None):
        calls.append(set(paths))
        return real(self, paths, lengths)

    monkeypatch.setattr(Embedder, "extract", counting)
    first = cached.embed(paths)
    again = cached.embed({"b": paths["b"], "a": paths["a"]})
    assert calls == [{"a", "b", "c"}] and list(again) == ["b", "a"]
    np.testing.assert_array_equal(again["a"], first["a"])
    (tmp_path / "x").mkdir()
    moved = write_waves(tmp_path / "x", {"a": 12000}, seed=3)
    cached.embed({"a": moved["a"], "c": paths["c"]})  # same key, another file: embedded anew
    assert calls[-1] == {"a"}
    assert cached.cache_path.name.startswith("best-") and len(list((tmp_path / "cache").iterdir())) == 1
    other = cached.with_max_frames(100)
    assert other.cache_path != cached.cache_path
    other.embed({"a": paths["a"]})
    assert calls[-1] == {"a"}




def test_an_embedder_takes_its_sample_rate_and_frames_from_the_front_end(tiny):
    e = embedder(tiny)
    assert e.sample_rate == SR and e.frames(19200) == 118 and e.frames(100) == embedding.MIN_EVAL_FRAMES


def test_the_embedding_store_adds_shards_and_reads_back_only_what_is_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(embedding, "STORE_CHUNK_ROWS", 1)  # every row its own chunk, read and written
    store = embedding.EmbeddingStore(tmp_path / "best-abc")
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    store.append({("a", "x/a.wav"): rows[0], ("b", "x/b.wav"): rows[1]}, {"version": 1})
    first = sorted(p.name for p in store.folder.iterdir())
    store.append({("a", "y/a.wav"): rows[2], ("c", "x/c.wav"): rows[3]}, {"version": 1})
    assert set(first) <= set(p.name for p in store.folder.iterdir())  # an addition never rewrites a shard
    assert len(store.shards()) == 2 and store.entries()[2:] == [("a", "y/a.wav"), ("c", "x/c.wav")]
    found = store.read({"a": "x/a.wav", "c": "x/c.wav", "d": "x/d.wav"})
    assert found.keys() == {"a", "c"} and np.array_equal(found["a"], rows[0]) and found["a"].dtype == np.float32
    assert np.array_equal(store.read({"a": "y/a.wav"})["a"], rows[2])  # the key's other file: its own entry
    store.append({("b", "x/b.wav"): rows[3]}, {"version": 1})
    assert np.array_equal(store.read({"b": "x/b.wav"})["b"], rows[3])  # a later shard wins
    orphan = store.folder / "shard-000009-dead.npy"  # killed before its index was written: not a shard
    np.save(orphan, rows)
    assert len(store.shards()) == 3 and store.read({"c": "x/c.wav"}).keys() == {"c"}
    with pytest.raises(ValueError, match="tab or newline"):
        store.append({("a\tb", "p"): rows[0]}, {})
    big = embedding.EmbeddingStore(tmp_path / "big")
    many = np.random.default_rng(0).standard_normal((50, 3)).astype(np.float32)
    big.append({(f"k{i}", f"p{i}"): row for i, row in enumerate(many)}, {})
    monkeypatch.setattr(embedding, "STORE_CHUNK_ROWS", 7)
    picks = [3, 4, 20, 49, 0]
    found = big.read({f"k{i}": f"p{i}" for i in picks})
    assert all(np.array_equal(found[f"k{i}"], many[i]) for i in picks)
    assert np.array_equal(np.load(big.shards()[0].with_suffix(".npy")), many)  # a plain .npy
