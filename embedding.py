"""Files to embeddings: the extraction policy, its batching, and the per-checkpoint embedding cache.

Full length by default: each file whole (at least MIN_EVAL_FRAMES, short files wrap-padded), batched with
files of the same frame count -- longest first, so a batch is a run of equal lengths. Cutting a wave to the
samples its frames cover changes nothing (the fbank frames and their CMN are those of the whole file), so these
batches give each file's embedding exactly as if it were alone (up to float rounding in batched kernels).
With bucket_crop c > 0 a batch also takes files up to a fraction c longer than its shortest, each cut to the
shortest one's frames (a centred window): faster on corpora of varied lengths, but no longer full length -- the
reports record it; bench/bench_eval.py measures the speed and the EER difference. With crops K > 0: the mean
of the L2-normalised embeddings of K crops of crop_frames frames, evenly spaced from the file's start to its
end (K = 1: the centred crop; a file shorter than a crop: one crop, wrap-padded), re-normalised.

The cache: <run>/embeddings/<checkpoint stem>-<hash>/, an `EmbeddingStore` keyed by (utterance key, file path)
that only ever adds shards; the hash covers the checkpoint's sha1 and every setting an embedding depends on, so
a file is embedded once per checkpoint and settings, however many lists, normalisations or runs use it.

Under torchrun (a process group started by distributed.init_distributed) `Embedder.embed` is collective: every
rank passes the same files, embeds every world_size-th of those the cache lacks, and gets all of them back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from config import Config
from data.audio import audio_info, load_audio, warn_short
from data.crops import wrap_pad
from data.features import FbankOptions, FrontEnd, num_frames_for_samples, num_samples_for_frames
from distributed import broadcast, current, gather, shard
from scoring import l2_normalise
from utils import UserError, atomic_path, atomic_write_text, autocast, remove_stale_temps

log = logging.getLogger("voiceprint")

MIN_EVAL_FRAMES = 50  # shorter files are wrap-padded to 0.5 s so every network sees a usable input
CACHE_VERSION = 1  # bump when what an embedding means changes without a settings change


@dataclass(frozen=True)
class Extraction:
    """How a file becomes one embedding (module docstring). With the checkpoint, `settings()` names the cache."""
    crops: int = 0  # K evenly spaced crops, their embeddings averaged; 0 = full length
    crop_frames: int = 300  # frames per crop
    max_frames: int = 0  # full length (or the span the crops come from): the first max_frames; 0 = all
    bucket_crop: float = 0.0  # full length: fraction of a file's frames a batch may cut; 0 = exact
    batch_size: int = 32  # files (full length) or crops per forward pass; changes speed, not embeddings

    def settings(self) -> dict[str, object]:
        """What the embeddings depend on (not the batch size: equal frame counts batch exactly)."""
        if self.crops:
            return {"crops": self.crops, "crop_frames": self.crop_frames, "max_frames": self.max_frames}
        return {"crops": 0, "max_frames": self.max_frames, "bucket_crop": self.bucket_crop}

    def describe(self) -> str:
        span = f" of the first {self.max_frames} frames" if self.max_frames else ""
        if self.crops:
            return f"mean of {self.crops} evenly spaced crops of {self.crop_frames} frames{span}"
        cut = (f"batched with files up to {100 * self.bucket_crop:g}% longer, cut (centred) to the shortest"
               if self.bucket_crop else "batched by equal frame count (exact)")
        return f"full length{span}, {cut}"


def extraction_from_config(cfg: Config) -> Extraction:
    return Extraction(cfg.eval_crops, cfg.eval_crop_frames, cfg.max_eval_frames, cfg.eval_bucket_crop,
                      cfg.eval_batch_size)


@dataclass
class Embedder:
    """A model and its front end on a device, with an extraction policy; with `cache_dir`, every embedding
    goes through the cache (module docstring). A file rewritten under the same path keeps its old embedding:
    delete the cache after editing audio in place."""
    model: nn.Module
    frontend: FrontEnd
    device: torch.device
    precision: str
    extraction: Extraction = Extraction()
    cache_dir: Path | None = None
    checkpoint_name: str = "model"  # the checkpoint's stem, first part of the cache file name
    checkpoint_sha1: str = ""
    compile: str = "off"  # config `compile` for extraction: auto | on | off (maybe_compile)

    @property
    def opts(self) -> FbankOptions:
        return self.frontend.opts

    @property
    def sample_rate(self) -> int:
        return self.frontend.opts.sample_rate

    def settings(self) -> dict[str, object]:
        return {"version": CACHE_VERSION, "checkpoint_sha1": self.checkpoint_sha1,
                "extraction": self.extraction.settings(), "fbank": dataclasses.asdict(self.opts),
                "cmn": self.frontend.cmn, "min_eval_frames": MIN_EVAL_FRAMES, "precision": self.precision}

    def settings_hash(self) -> str:
        return hashlib.sha1(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()[:12]

    @property
    def cache_path(self) -> Path | None:
        """The folder of this checkpoint's and settings' EmbeddingStore, under cache_dir."""
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{self.checkpoint_name}-{self.settings_hash()}"

    def with_max_frames(self, max_frames: int) -> Embedder:
        return dataclasses.replace(self, extraction=dataclasses.replace(self.extraction, max_frames=max_frames))

    def embed(self, paths: dict[str, str], lengths: dict[str, int] | None = None) -> dict[str, np.ndarray]:
        """key -> embedding of each file, from the cache or extracted (`lengths`: see `extract`).

        Under a process group (torchrun) every rank calls this with the same files and gets every embedding:
        rank 0 reads the cache and tells the others what it holds, each rank extracts every world_size-th of
        the rest, the ranks gather what they extracted, and rank 0 adds it to the cache."""
        d = current()
        found = broadcast(EmbeddingStore(self.cache_path).read(paths) if self.cache_path and d.main else {}, d)
        todo = {k: p for k, p in paths.items() if k not in found}
        if self.cache_path:
            log.info("embeddings: %d of %d files from %s, %d to embed%s", len(found), len(paths), self.cache_path,
                     len(todo), f" over {d.world_size} ranks" if d.distributed else "")
        mine = dict(shard(list(todo.items()), d))
        new = gather(self.extract(mine, lengths) if mine else {}, d)
        if self.cache_path and new and d.main:
            EmbeddingStore(self.cache_path).append({(k, todo[k]): e for k, e in new.items()}, self.settings())
        return {k: found[k] if k in found else new[k] for k in paths}

    @torch.no_grad()
    def extract(self, paths: dict[str, str], lengths: dict[str, int] | None = None) -> dict[str, np.ndarray]:
        """L2-normalised (D,) embedding of every file, batched as the module docstring says, no cache.
        `lengths` (samples at sample_rate, e.g. Utterance.num_samples of a corpus index) saves the header reads
        that plan the batches."""
        self.model.eval()
        self.frontend.eval()
        known = lengths or {}
        lengths = {k: known.get(k) or audio_info(p, self.sample_rate) for k, p in paths.items()}  # bad file: here
        warn_short({paths[k]: n for k, n in lengths.items()}, self.sample_rate, "embedding")
        self.maybe_compile(sum(lengths.values()) / self.sample_rate)
        crops = self.extraction.crops > 0
        embeddings: dict[str, np.ndarray] = {}
        with tqdm(total=len(paths), unit="file", desc="embedding", disable=None if current().main else True,
                  leave=False) as bar:
            for keys in (self.crop_batches(lengths) if crops else self.full_length_batches(lengths)):
                embeddings.update(self.embed_crops(keys, paths) if crops else self.embed_full_length(keys, paths))
                bar.update(len(keys))
        check_finite(embeddings, paths, self.model, self.checkpoint_name)
        return {k: embeddings[k] for k in paths}

    def maybe_compile(self, audio_seconds: float) -> None:
        """`compile` for extraction: on compiles the model's eval forward with dynamic shapes (batches vary in
        size and frame count); auto does so where the estimated saving on these `audio_seconds` exceeds the
        compile (EXTRACT_COMPILE). A runtime of its own (deploy.OnnxEmbedder) has no torch forward to compile."""
        if self.compile == "off" or type(self).forward is not Embedder.forward or compiled(self.model):
            return
        rtf, compile_seconds, ratio = EXTRACT_COMPILE["cuda" if self.device.type == "cuda" else "cpu"]
        if self.compile == "auto" and not compile_pays(1, audio_seconds / rtf, compile_seconds, ratio):
            return
        log.info("embedding: compiling the model (compile %s, %.0f s of audio)", self.compile, audio_seconds)
        compile_forward(self.model, training=False, dynamic=True)

    @torch.no_grad()
    def forward(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """(B,) equal-length waves -> (B, D) L2-normalised embeddings."""
        x = torch.from_numpy(np.stack(waves)).to(self.device)  # (B, N)
        feats = self.frontend(x)  # (B, T, F)
        with autocast(self.device, self.precision):
            emb = self.model(feats)  # (B, D)
        return F.normalize(emb.float(), dim=-1).cpu().numpy()

    def span(self, length: int) -> int:
        """Samples of a file of `length` samples that are embedded (before wrap padding)."""
        max_frames = self.extraction.max_frames
        return min(length, num_samples_for_frames(max_frames, self.opts)) if max_frames else length

    def load(self, path: str) -> np.ndarray:
        max_frames = self.extraction.max_frames
        stop = num_samples_for_frames(max_frames, self.opts) if max_frames else None
        return load_audio(path, self.sample_rate, 0, stop)

    # full length

    def frames(self, num_samples: int) -> int:
        min_samples = num_samples_for_frames(MIN_EVAL_FRAMES, self.opts)
        return num_frames_for_samples(max(num_samples, min_samples), self.opts)

    def full_length_batches(self, lengths: dict[str, int]) -> list[list[str]]:
        """Files longest first; a batch takes the next file while it is at least (1 - bucket_crop) times its
        first (longest) file's frame count and fewer than batch_size files are in it."""
        frames = {k: self.frames(self.span(n)) for k, n in lengths.items()}
        batches: list[list[str]] = []
        for key in sorted(frames, key=lambda k: (-frames[k], k)):
            if (batches and len(batches[-1]) < self.extraction.batch_size
                    and frames[key] >= frames[batches[-1][0]] * (1.0 - self.extraction.bucket_crop)):
                batches[-1].append(key)
            else:
                batches.append([key])
        return batches

    def embed_full_length(self, keys: Sequence[str], paths: dict[str, str]) -> dict[str, np.ndarray]:
        min_samples = num_samples_for_frames(MIN_EVAL_FRAMES, self.opts)
        waves = [self.load(paths[k]) for k in keys]
        waves = [wrap_pad(w, min_samples) if len(w) < min_samples else w for w in waves]
        frames = np.array([num_frames_for_samples(len(w), self.opts) for w in waves])
        # a header length can differ from the decoded one by a sample (resampled files): group by the decoded
        groups = [np.arange(len(keys))] if self.extraction.bucket_crop else [
            np.flatnonzero(frames == t) for t in np.unique(frames)]
        out = {}
        for group in groups:
            shortest = int(frames[group].min())
            cut = [self.centred(waves[i], int(frames[i]), shortest) for i in group]
            out.update(zip([keys[i] for i in group], self.forward(cut)))
        return out

    def centred(self, wave: np.ndarray, frames: int, target: int) -> np.ndarray:
        """The samples of `target` frames centred in the wave's `frames` frames (all of them when equal)."""
        start = (frames - target) // 2 * self.opts.frame_shift
        return wave[start:start + num_samples_for_frames(target, self.opts)]

    # crops

    def crop_batches(self, lengths: dict[str, int]) -> list[list[str]]:
        """Files in order, as many per batch as fill batch_size crops (at least one file)."""
        per_file = max(1, self.extraction.batch_size // self.extraction.crops)
        keys = list(lengths)
        return [keys[i:i + per_file] for i in range(0, len(keys), per_file)]

    def crop_starts(self, length: int) -> list[int]:
        window = num_samples_for_frames(self.extraction.crop_frames, self.opts)
        if length <= window:
            return [0]
        if self.extraction.crops == 1:
            return [(length - window) // 2]
        return [int(s) for s in np.linspace(0, length - window, self.extraction.crops).round()]

    def embed_crops(self, keys: Sequence[str], paths: dict[str, str]) -> dict[str, np.ndarray]:
        window = num_samples_for_frames(self.extraction.crop_frames, self.opts)
        crops, owners = [], []
        for i, key in enumerate(keys):
            wave = self.load(paths[key])
            for start in self.crop_starts(len(wave)):
                crops.append(wrap_pad(wave[start:start + window], window))
                owners.append(i)
        emb = self.forward(crops)  # (crops, D)
        owners = np.array(owners)
        return {key: l2_normalise(emb[owners == i].mean(axis=0)) for i, key in enumerate(keys)}


def check_finite(embeddings: dict[str, np.ndarray], paths: dict[str, str], model: nn.Module, name: str) -> None:
    """A NaN or infinite embedding is an error naming its file and its cause (the audio is checked when read,
    so it is the model's weights, or an overflow inside it)."""
    bad = [k for k, e in embeddings.items() if not np.isfinite(e).all()]
    if bad:
        weights = not all(torch.isfinite(p).all() for p in model.parameters())
        cause = f"the model's weights ({name}) hold NaN or inf values" if weights else "an overflow in the model"
        raise UserError(f"{paths[bad[0]]}: its embedding is NaN or infinite ({len(bad)} of {len(embeddings)} "
                        f"files): {cause}")


# --- the embedding cache -------------------------------------------------------------------------------

def file_sha1(path: str | Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class EmbeddingStore:
    """The embeddings of one checkpoint under one set of settings: a folder of shards, each written once and
    never rewritten, so adding entries costs what they cost, however large the store (VoxCeleb2's 1.09 M
    training files for train_sort; bench/bench_store.py measures it):

        settings.json               what the embeddings depend on (Embedder.settings), for the reader
        shard-NNNNNN-TOKEN.npy      (n, D) float32: the embeddings of one addition
        shard-NNNNNN-TOKEN.tsv      its index, line i `<key>\t<path>` of row i; written after the .npy, so a
                                    shard without it (a kill between the two writes) is ignored

    `read` scans the indexes and reads only the rows asked for, STORE_CHUNK_ROWS at a time; a later shard wins
    over an earlier one. `append` writes its rows the same way, so neither holds a second copy of a store's
    embeddings. Concurrent writers (separate runs sharing a checkpoint) each add their own shard (TOKEN is
    random): nothing is lost or torn. Keys and paths hold no tab or newline."""
    folder: Path

    def shards(self) -> list[Path]:
        """The complete shards' .tsv files, oldest first."""
        return sorted(self.folder.glob("shard-*.tsv")) if self.folder.is_dir() else []

    def read(self, wanted: dict[str, str]) -> dict[str, np.ndarray]:
        """key -> stored embedding of every (key, path) of `wanted` in the store."""
        hits: dict[str, tuple[Path, int]] = {}
        for index in self.shards():
            with open(index, encoding="utf-8") as f:
                for row, line in enumerate(f):
                    key, _, path = line.rstrip("\n").partition("\t")
                    if wanted.get(key) == path:
                        hits[key] = (index, row)
        found: dict[str, np.ndarray] = {}
        for index in sorted({source for source, _ in hits.values()}):
            keys = sorted((k for k, (source, _) in hits.items() if source == index), key=lambda k: hits[k][1])
            try:
                found.update(zip(keys, read_rows(index.with_suffix(".npy"), np.array([hits[k][1] for k in keys]))))
            except (OSError, ValueError) as err:
                log.warning("%s: unreadable embedding shard (%s); re-embedding its files", index, err)
        return found

    def entries(self) -> list[tuple[str, str]]:
        """Every stored (key, path), oldest shard first (a test's and a bench's view)."""
        return [tuple(line.rstrip("\n").split("\t", 1)) for index in self.shards()
                for line in index.read_text(encoding="utf-8").splitlines(keepends=True)]

    def append(self, new: dict[tuple[str, str], np.ndarray], settings: dict) -> Path:
        """Add entries as one new shard (the .npy, then its .tsv, each atomically). Returns the .tsv."""
        if any(c in k + p for k, p in new for c in "\t\n"):
            raise ValueError("embedding store: a key or path holds a tab or newline")
        remove_stale_temps(self.folder, recursive=False)  # of a writer killed inside its shard
        if not (self.folder / "settings.json").is_file():
            atomic_write_text(self.folder / "settings.json", json.dumps(settings, sort_keys=True, indent=2))
        shards = self.shards()
        number = int(shards[-1].name.split("-")[1]) + 1 if shards else 0
        stem = self.folder / f"shard-{number:06d}-{secrets.token_hex(4)}"
        rows = list(new.values())
        with atomic_path(stem.with_suffix(".npy")) as tmp, open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                     "shape": (len(rows), len(rows[0]))})
            for first in range(0, len(rows), STORE_CHUNK_ROWS):
                f.write(np.stack(rows[first:first + STORE_CHUNK_ROWS]).astype("<f4").tobytes())
        with atomic_path(stem.with_suffix(".tsv")) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.writelines(f"{k}\t{p}\n" for k, p in new)
        return stem.with_suffix(".tsv")


STORE_CHUNK_ROWS = 1 << 16  # rows an EmbeddingStore reads or writes at a time (48 MiB of 192-dim float32)


def read_rows(path: Path, rows: np.ndarray) -> np.ndarray:
    """Rows (ascending indices) of an (n, D) little-endian float32 .npy, (len(rows), D): a chunk at a time,
    only the chunks that hold some."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(f)
        if fortran_order or dtype != np.dtype("<f4") or len(shape) != 2 or (len(rows) and rows[-1] >= shape[0]):
            raise ValueError(f"not the (n, D) float32 rows of a shard: {shape}, {dtype}")
        start, dim = f.tell(), shape[1]
        out = np.empty((len(rows), dim), dtype=np.float32)  # (rows, D)
        for first in range(0, shape[0], STORE_CHUNK_ROWS):
            lo, hi = np.searchsorted(rows, [first, first + STORE_CHUNK_ROWS])
            if lo == hi:
                continue
            count = int(rows[hi - 1]) + 1 - first
            f.seek(start + first * dim * 4)
            block = np.fromfile(f, dtype="<f4", count=count * dim)
            if len(block) != count * dim:
                raise ValueError("truncated")
            out[lo:hi] = block.reshape(count, dim)[rows[lo:hi] - first]
        return out


def save_embeddings(embeddings: dict[str, np.ndarray], paths: dict[str, str], folder: Path) -> None:
    """folder/embeddings.npy (N, D) float32 and folder/embeddings.txt, line i = `<key> <path>` of row i."""
    keys = sorted(embeddings)
    with atomic_path(folder / "embeddings.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, np.stack([embeddings[k] for k in keys]).astype(np.float32))
    atomic_write_text(folder / "embeddings.txt", "".join(f"{k} {paths[k]}\n" for k in keys))
    log.info("embeddings of %d files written to %s/embeddings.npy (+ .txt index)", len(keys), folder)


# --- torch.compile: the policy of config `compile`, and a compiled forward that falls back to eager -----------

# Measured on the 2-core CPU (bench/bench_speed.py, README "Speed"; noisy: the machine was shared): inductor
# compiles ECAPA-TDNN C=512's bf16 training step (batch 64 x 200 frames) in 57-98 s, after which the step took
# 0.70-0.91x the eager one (issue 16: 0.81x after 80 s), and 1.15x under a load of 9. Taken conservatively:
CPU_COMPILE_SECONDS = 100.0  # the compile, s
CPU_COMPILED_RATIO = 0.85  # compiled step / eager step
# Measured on a lent NVIDIA H200 (torch 2.11, bench_speed's GPU rows; README "Speed"): a fresh compile of the same
# step took 25 s (batch 64) and 34 s (batch 256), after which the step took 0.89x (64) and 0.66x (256) the eager
# one, so a 6-epoch demo run (336 steps of ~20 ms) never repays it; taken conservatively:
CUDA_COMPILE_SECONDS = 35.0
CUDA_COMPILED_RATIO = 0.9
COMPILE_COST = {"cpu": (CPU_COMPILE_SECONDS, CPU_COMPILED_RATIO), "cuda": (CUDA_COMPILE_SECONDS, CUDA_COMPILED_RATIO)}
# FLOP/s (forward + backward, counted) of the eager training step per precision on that CPU, quiet (README
# "Speed": ECAPA-TDNN 298 bf16 / 167 fp32 GFLOP/s, ResNet34 388 / 202): a step's time estimated from its FLOPs
CPU_STEP_FLOPS = {"bf16": 300e9, "fp32": 170e9, "fp16": 170e9}
# Extraction (read + fbank + model, dynamic shapes), per device type: (eager real-time factor, compile s,
# compiled / eager time). CPU: 300x eager (bf16), a 102 s compile for 0.93x the time, so auto compiles from
# ~120 h of audio on (a training-list embedding for train_sort). CUDA (the H200 above, 600 files of 2-5 s,
# batches of 32): 2951x eager (bf16), a 30 s compile for 0.44x the time, so from ~45 h of audio on.
EXTRACT_COMPILE = {"cpu": (300.0, 100.0, 0.93), "cuda": (3000.0, 30.0, 0.45)}


def compile_pays(steps: int, step_seconds: float, compile_seconds: float = CPU_COMPILE_SECONDS,
                 compiled_ratio: float = CPU_COMPILED_RATIO) -> bool:
    """Whether compiling repays itself within the run: the time saved over `steps` steps of `step_seconds`
    (eager) exceeds the compile's."""
    return steps * step_seconds * (1.0 - compiled_ratio) > compile_seconds


class CompiledForward:
    """A module's forward compiled for one mode (training, or eval) and eager in the other, set as the module's
    `forward` attribute: the module tree and its state_dict keys stay those of the plain module (no `_orig_mod.`
    prefix). The first failure of the compiled call (no C++ compiler, an inductor error) logs one line and
    runs eager from then on; a genuine error in the model then surfaces from the eager call."""

    def __init__(self, module: nn.Module, training: bool, dynamic: bool | None):
        self.module, self.training, self.eager = module, training, module.forward
        self.compiled = torch.compile(self.eager, dynamic=dynamic)

    def __call__(self, *args, **kwargs):
        if self.compiled is None or self.module.training != self.training:
            return self.eager(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 -- whatever inductor raises, the run goes on eager
            self.fall_back(err)
            return self.eager(*args, **kwargs)

    def fall_back(self, err: BaseException) -> None:
        if self.compiled is not None:
            log.warning("torch.compile failed (%s: %s); running eager", type(err).__name__,
                        (str(err).strip().splitlines() or [""])[0][:200])
        self.compiled = None


def compile_forward(module: nn.Module, training: bool, dynamic: bool | None) -> CompiledForward | None:
    """`module`'s forward compiled for training (True) or eval mode (CompiledForward); None, with one log line,
    where torch.compile itself is unavailable."""
    if isinstance(module.forward, CompiledForward):
        return module.forward
    try:
        module.forward = CompiledForward(module, training, dynamic)
    except Exception as err:  # noqa: BLE001
        log.warning("torch.compile unavailable (%s: %s); running eager", type(err).__name__, err)
        return None
    return module.forward


def compiled(module: nn.Module) -> bool:
    """Whether `module` runs a compiled forward (one that has not fallen back)."""
    return isinstance(module.forward, CompiledForward) and module.forward.compiled is not None
