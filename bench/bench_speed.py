"""Speed benchmark: the training step and embedding extraction on this machine, as one Markdown table.

    python -m bench.bench_speed                                   # the default run; ResNet34 is most of its time
    python -m bench.bench_speed --models ecapa_tdnn --steps 5      # more steps, one model
    python -m bench.bench_speed --skip-allocator --skip-extraction
    python -m bench.bench_speed --skip-training --skip-extraction --skip-epoch   # the wespeaker-style comparison
    python -m bench.bench_speed --skip-training --skip-versus --skip-extraction \
        --epoch-variants "" "--num-workers 0"                       # epoch vs model-only step, two loaders

Run from the repository root. Every number in the table comes from this one run, so the ratios compare
measurements taken minutes apart on the same machine under the same load. What is measured:

- GEMM: a 1x1 Conv1d forward (batch 64, 512 -> 1536 channels, 200 frames) in fp32 and in bf16 (autocast),
  alternated, best of --gemm-repeats: about the best rate this machine's matrix products reach. The training
  rows give their rate (forward + backward FLOPs, counted) as a percentage of the same GEMM timed inside their
  subprocess between their steps, so that load stretches both alike; above 100% means the load eased during
  the steps.
- train step: batch --batch-size x 200 frames of random fbank, forward + AAM head (--speakers classes) +
  backward + Adam step; the fastest of --steps steps after one warm-up step (the median is shown beside it).
  Minima, because the load on a shared machine comes in bursts: the fastest step is the one least disturbed,
  and the configurations alternate step by step so that each gets its share of quiet moments. A training
  configuration runs in
  a subprocess of its own, because the allocator setting (utils.configure_malloc, a mallopt call) cannot be
  undone in a process; inside a subprocess its configurations alternate step by step, so their ratios are
  measured under the same conditions. For the first model (ECAPA-TDNN C=512 by default):
    A  fp32, glibc's default allocator, for-loop Adam: the straightforward step (the baseline);
    B  fp32, configure_malloc, fused Adam;
    C  bf16 autocast, configure_malloc, fused Adam: the project's default on a CPU with native bf16.
  Also shown: bf16 with glibc's defaults (A's process), and fp32 with for-loop Adam in B's process, which
  splits B/A into the allocator's share (across processes) and fused Adam's (same process). Targets for
  ECAPA-TDNN: C/A >= 2.5x, C/B >= 1.6x. Other models (--models) get B and C.
- extraction: --extract-files random-noise 16-bit wav files of 2-5 s (uniform) through
  embedding.Embedder.extract, file reading and fbank included, ECAPA-TDNN C=512 (random weights: the speed
  does not depend on them), batches of --eval-batch-size files bucketed by length (--bucket-crop: a batch may
  cut its files to its shortest one's frames, by up to that fraction). Real-time factor = audio seconds per
  wall second, the best of --passes passes after a warm-up, each pass over new files (new lengths create new
  oneDNN primitives, as they would on a real corpus), fp32 and bf16 alternating. Target: >= 300x.
  "audio s per GEMM GFLOP" divides the real-time factor by the best GEMM rate timed between the passes:
  ECAPA-TDNN C=512 costs 0.96 GFLOP per audio second, so about 1.0 means the extraction runs at the GEMM's
  pace, and the real-time factor on a quiet machine is about that number times the GEMM rate measured there.

- wespeaker-style comparison (a subprocess; --versus-speakers AAM classes, 1,000 by default as in issue 16):
  the default step (bf16, fused Adam), eager and with the model compiled as `train.py --compile on` does
  (inductor, static shapes; its compile timed), against the paper-exact ECAPA-TDNN step as wespeaker runs it on
  a CPU: fp32, the literal attentive statistics pooling (tests/test_speed.py's ReferencePooling), torch's
  default Adam; the three alternate step by step. Target: default / wespeaker-style <= 0.40x.
- epoch: one epoch of train.py's own run_epoch on --epoch-corpus (training loop with the real loader, fbank,
  SpecAugment, validation, checkpoint, log, curves) against its batches x the model-only step (the same model,
  head and optimizer on a fixed fbank batch), timed --steps times just before and just after the epoch in the
  same subprocess; one row per --epoch-variants entry (train.py flags), with the epoch's parts. Target: within
  10% (<= 1.10x).
- extraction also runs bf16 with the model compiled as `--compile on` does for extraction (dynamic shapes;
  the warm-up pass over 40 files is its compile) and the ONNX Runtime path (deploy.OnnxEmbedder on an export
  of the same weights, fp32) where onnx is installed. Target for the bf16 rows: >= 600x.
- GPU (only where CUDA is present; --cuda-only leaves out the CPU's rows): training steps on a fixed fbank
  batch at each of --gpu-batches, eager against compiled (the compile timed, the steps that repay it), with
  the GPU's utilisation (torch.cuda.utilization, else nvidia-smi) right after them; extraction on the GPU,
  fp32, bf16 and bf16 compiled, over --gpu-extract-files files; and --gpu-epochs epochs of train.py at batch
  256 without validation, fed by its DataLoader (one row per --gpu-workers entry): the later epochs' training
  pass, its samples/s against the model-only step's, its loader waits and the GPU's mean utilisation sampled
  every 0.1 s (whether the loader keeps it busy). On CUDA every timed part waits for the GPU's queued kernels
  before and after (torch.cuda.synchronize). bench/gpu_check.sh runs these with the CUDA tests.

torch runs --threads threads (default: all CPUs). Other processes slow every number, and with OpenMP a busy
neighbour can stretch a step several times over (threads spin at barriers for a descheduled peer): the last
row gives the 1-minute load average before and after the run; compare ratios, not times, across runs.
Progress goes to the log on stderr; only the table goes to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from compare import OneLineParser
from config import Config
from loss import build_head
from models import MODELS, build_model
from utils import autocast, configure_malloc, run_main

log = logging.getLogger("voiceprint")

N_MELS = 80
CROP_FRAMES = 200  # 2 s training crop
SAMPLE_RATE = 16000
MALLOC_VARIABLES = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")
CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parent.parent


# --- training configurations, timed in a subprocess ------------------------------------------------------
# A configuration is "precision:optimizer", e.g. "bf16:fused" (optimizer: "loop" = for-loop Adam, torch's
# default on the CPU; "fused" = Adam(fused=True)).

def train_worker(args: argparse.Namespace) -> dict:
    """Seconds per training step of args.models[0] for each of args.configs, alternating step by step."""
    applied = configure_malloc() if args.malloc == "tuned" else False
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    model = build_model(args.models[0], n_mels=N_MELS).train()
    head = build_head("aam", embed_dim=model.embed_dim, num_speakers=args.speakers, margin=0.2, scale=30.0)
    params = [*model.parameters(), *head.parameters()]
    optimizers = {"loop": torch.optim.Adam(params, lr=1e-4, foreach=False),
                  "fused": torch.optim.Adam(params, lr=1e-4, fused=True)}
    feats = torch.randn(args.batch_size, CROP_FRAMES, N_MELS, generator=generator)
    labels = torch.randint(0, args.speakers, (args.batch_size,), generator=generator)

    def step(config: str) -> None:
        precision, name = config.split(":")
        with autocast(CPU, precision):
            loss, _ = head(model(feats), labels)
        optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[name].step()

    flops = {}
    for config in args.configs:  # the warm-up step of each, its FLOPs counted
        with FlopCounterMode(display=False) as counter:
            step(config)
        flops[config] = counter.get_total_flops()
    times: dict[str, list[float]] = {c: [] for c in args.configs}
    gemm = Gemm()
    for _ in range(args.steps):
        for config in args.configs:
            started = time.perf_counter()
            step(config)
            times[config].append(time.perf_counter() - started)
        gemm.measure()
    return {"malloc_applied": applied, "flops": flops, "times": times, "gemm": gemm.rates}


def run_train_worker(model: str, configs: list[str], malloc: str, args: argparse.Namespace) -> dict:
    """train_worker in a fresh interpreter, with glibc's allocator defaults ("default") or configure_malloc."""
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_VARIABLES}
    command = [sys.executable, "-m", "bench.bench_speed", "--worker", "--models", model, "--configs", *configs,
               "--malloc", malloc, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
               "--speakers", str(args.speakers), "--threads", str(args.threads), "--seed", str(args.seed)]
    log.info("train step, %s: %s, %s allocator, 1 + %d steps each (subprocess)", model, " ".join(configs),
             malloc, args.steps)
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark subprocess failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if malloc == "tuned" and not result["malloc_applied"]:
        log.warning("configure_malloc did not apply (not glibc?): the allocator rows compare nothing")
    return result


# --- the default step against a wespeaker-style step, and the compiled step (one subprocess) --------------
# "reference": ECAPA-TDNN C=512 with the literal attentive statistics pooling (tests/test_speed.py's
# ReferencePooling, all float32), fp32, torch's default Adam: the paper-exact step as wespeaker runs it on a
# CPU. "default": the project's step (bf16 autocast, fused Adam). "compiled": the default step with the model
# compiled as train.py's --compile on does (embedding.compile_forward, static shapes). AAM over --speakers.

def versus_worker(args: argparse.Namespace) -> dict:
    """Seconds per step of each of args.configs (reference, default, compiled), alternating step by step after
    one warm-up step each (the compiled one's warm-up is its compile, timed)."""
    configure_malloc()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(args.seed)
    feats = torch.randn(args.batch_size, CROP_FRAMES, N_MELS, generator=generator)
    labels = torch.randint(0, args.speakers, (args.batch_size,), generator=generator)
    steps, warmup = {}, {}
    for config in args.configs:
        steps[config] = comparison_step(config, feats, labels, args.speakers, args.seed, "bf16")
        started = time.perf_counter()
        steps[config]()
        warmup[config] = time.perf_counter() - started
        log.info("%s: warm-up step %.1f s", config, warmup[config])
    times: dict[str, list[float]] = {c: [] for c in args.configs}
    for _ in range(args.steps):
        for config in args.configs:
            started = time.perf_counter()
            steps[config]()
            times[config].append(time.perf_counter() - started)
    return {"times": times, "warmup": warmup}


def comparison_step(config: str, feats: torch.Tensor, labels: torch.Tensor, speakers: int, seed: int,
                    default_precision: str) -> Callable[[], None]:
    """One training step of a comparison configuration on `feats`' device, as a callable (a fresh model seeded
    with `seed`, an AAM head over `speakers` classes): "reference", the wespeaker-style step (fp32, the literal
    attentive pooling, torch's default Adam); "default", the project's step (`default_precision`, fused Adam);
    "compiled", the default with the model compiled as train.py's --compile on does."""
    from embedding import compile_forward
    from tests.test_speed import ReferencePooling

    device = feats.device
    torch.manual_seed(seed)
    model = build_model("ecapa_tdnn", n_mels=N_MELS)
    if config == "reference":
        model.pool = ReferencePooling(model.pool.channels, 128)  # the paper's attention bottleneck
    model = model.to(device).train()
    if config == "compiled" and compile_forward(model, training=True, dynamic=False) is None:
        raise RuntimeError("torch.compile unavailable")
    head = build_head("aam", embed_dim=model.embed_dim, num_speakers=speakers, margin=0.2, scale=30.0).to(device)
    optimizer = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=1e-4, fused=config != "reference")
    precision = "fp32" if config == "reference" else default_precision
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    return functools.partial(bench_step, model, head, optimizer, scaler, feats, labels, precision)


def bench_step(model: nn.Module, head: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               feats: torch.Tensor, labels: torch.Tensor, precision: str) -> None:
    with autocast(feats.device, precision):
        loss, _ = head(model(feats), labels)  # (B, T, F) -> loss
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()  # the scaler passes everything through unless fp16
    scaler.step(optimizer)
    scaler.update()


def run_versus_worker(configs: list[str], args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "bench.bench_speed", "--worker", "--versus", "--configs", *configs,
               "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--speakers",
               str(args.versus_speakers), "--threads", str(args.threads), "--seed", str(args.seed)]
    log.info("train step, ecapa_tdnn: %s, 1 + %d steps each (subprocess)", " ".join(configs), args.steps)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark subprocess failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- an end-to-end epoch of train.py against its model-only steps (one subprocess) -------------------------

def synchronizer(device: torch.device) -> Callable[[], None]:
    """Waits for the device's queued kernels (CUDA runs them asynchronously); nothing on a CPU."""
    return torch.cuda.synchronize if device.type == "cuda" else lambda: None


class Timed:
    """Wraps a function of module `owner`, adding up its seconds (a probe for the epoch's breakdown); `sync`
    waits for the device before and after, so that a CUDA part is charged its kernels' time."""

    def __init__(self, owner: object, name: str, totals: dict[str, float], when: object = None,
                 sync: Callable[[], None] = lambda: None):
        self.fn, self.name, self.totals, self.when, self.sync = getattr(owner, name), name, totals, when, sync
        setattr(owner, name, self)

    def __call__(self, *args, **kwargs):
        if self.when is not None and not self.when():
            return self.fn(*args, **kwargs)
        self.sync()
        started = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.sync()
            self.totals[self.name] = self.totals.get(self.name, 0.0) + time.perf_counter() - started


class UtilisationSampler:
    """The GPU's utilisation (gpu_utilisation) read every `every` seconds by a thread while the `with` block
    runs: `mean` of the readings, None where none could be read (no pynvml and no nvidia-smi)."""

    def __init__(self, every: float = 0.5, read: Callable[[], str] | None = None):
        self.every, self.read, self.readings = every, read or gpu_utilisation, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.poll, daemon=True)

    def poll(self) -> None:
        while not self.stop.wait(self.every):
            reading = self.read()
            if reading.endswith("%"):
                self.readings.append(float(reading[:-1]))

    def __enter__(self) -> UtilisationSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.readings) if self.readings else None


def epoch_worker(args: argparse.Namespace) -> dict:
    """One epoch of train.py's run_epoch on --epoch-corpus (its training loop, validation, checkpoint and log),
    with the model-only step (random fbank of the training shape, the same model, head and precision) timed
    --steps times just before and just after it; the epoch's parts from wrapped functions."""
    import train
    from config import build_config, make_parser, parse_args
    from distributed import init_distributed
    from embedding import compiled

    flags = ["--name", "epoch", "--exp-dir", args.epoch_dir, "--epochs", str(args.epoch_count), "--train-data",
             args.epoch_corpus, "--threads", str(args.threads), *args.epoch_flags.split()]
    cfg = build_config(parse_args(flags, train.__doc__, make_parser(train.__doc__, "train.py"))[0])
    configure_malloc()
    torch.set_num_threads(args.threads)
    d = init_distributed(cfg.device, cfg.dist_timeout_min)
    run, _ = train.open_run(cfg, None, d)
    data = train.training_data(cfg, run, None, d)
    t = train.build_trainer(cfg, data, d, None)
    sync = synchronizer(t.device)
    totals: dict[str, float] = {}
    for name in ("train_epoch", "forward_backward", "optimizer_step", "validate", "save_checkpoint", "write_log",
                 "write_curves"):
        Timed(train, name, totals, sync=sync)
    Timed(t.frontend, "forward", totals, lambda: t.frontend.training, sync)  # training fbank, CMN, SpecAugment
    feats = torch.randn(cfg.batch_size, cfg.num_frames, cfg.n_mels, device=t.device)  # (B, T, F)
    labels = torch.randint(0, len(data.classes), (cfg.batch_size,), device=t.device)
    model_steps = [model_step(t, feats, labels, sync) for _ in range(args.steps + 1)][1:]
    epochs, parts, utilisation = [], [], []
    for epoch in range(args.epoch_count):
        before = dict(totals)
        with UtilisationSampler(0.1) if t.device.type == "cuda" else contextlib.nullcontext() as sampler:
            started = time.perf_counter()
            train.run_epoch(t, epoch, run, data)
            epochs.append(time.perf_counter() - started)
        parts.append({k: v - before.get(k, 0.0) for k, v in totals.items()})
        utilisation.append(sampler.mean if sampler else None)
    model_steps += [model_step(t, feats, labels, sync) for _ in range(args.steps)]
    return {"epoch": epochs[0], "epochs": epochs, "batches": len(t.loader.batch_sampler), "batch_size":
            cfg.batch_size, "model_steps": model_steps, "parts": parts[0], "parts_each": parts,
            "workers": cfg.num_workers, "flags": flags, "device": str(t.device), "gpu_utilisation": utilisation[0],
            "gpu_utilisation_each": utilisation, "compiled": compiled(t.trainee.model)}


def model_step(t: object, feats: torch.Tensor, labels: torch.Tensor, sync: Callable[[], None]) -> float:
    """Seconds of one training step of t (a train.Trainer) on a given fbank batch: forward, backward, Adam."""
    sync()
    started = time.perf_counter()
    with autocast(t.device, t.precision):
        loss, _ = t.trainee(feats, labels, t.cfg.margin)
    t.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    t.optimizer.step()
    sync()
    return time.perf_counter() - started


def run_epoch_worker(args: argparse.Namespace, flags: list[str], epochs: int = 1) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_epoch_") as tmp:
        command = [sys.executable, "-m", "bench.bench_speed", "--worker", "--epoch", "--epoch-dir", tmp,
                   "--epoch-corpus", args.epoch_corpus, "--steps", str(args.steps), "--threads", str(args.threads),
                   "--epoch-count", str(epochs), f"--epoch-flags={' '.join(flags)}"]
        log.info("epoch of train.py on %s, %s (subprocess)", args.epoch_corpus, " ".join(flags) or "defaults")
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark subprocess failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- in this process: the GEMM reference and extraction --------------------------------------------------

class Gemm:
    """The reference: GFLOP/s of a 1x1 Conv1d forward, 512 -> 1536, batch 64 x 200 frames, fp32 and bf16
    (autocast). `measure` times each precision once, alternating; `rates` is the best seen so far. Timed
    between the measurements it normalises, so that load stretches both alike."""

    FLOPS = 2 * 64 * CROP_FRAMES * 512 * 1536

    def __init__(self) -> None:
        self.conv = nn.Conv1d(512, 1536, kernel_size=1)
        self.x = torch.randn(64, 512, CROP_FRAMES)
        self.best = {"fp32": float("inf"), "bf16": float("inf")}
        self.measure(record=False)  # warm-up

    def measure(self, repeats: int = 1, record: bool = True) -> None:
        with torch.inference_mode():
            for _ in range(repeats):
                for precision in self.best:
                    with autocast(CPU, precision):
                        started = time.perf_counter()
                        self.conv(self.x)
                        elapsed = time.perf_counter() - started
                    if record:
                        self.best[precision] = min(self.best[precision], elapsed)

    @property
    def rates(self) -> dict[str, float]:
        return {p: self.FLOPS / t / 1e9 for p, t in self.best.items()}


def write_random_audio(folder: Path, count: int, rng: np.random.Generator) -> dict[str, str]:
    """`count` 16-bit wav files of 2-5 s (uniform) of noise at speech level; key -> path."""
    import soundfile

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for i in range(count):
        wave = np.clip(0.1 * rng.standard_normal(int(rng.uniform(2.0, 5.0) * SAMPLE_RATE)), -1.0, 1.0)
        paths[f"{folder.name}/{i:04d}"] = str(folder / f"{i:04d}.wav")
        soundfile.write(paths[f"{folder.name}/{i:04d}"], wave, SAMPLE_RATE, subtype="PCM_16")
    return paths


def extraction_embedders(args: argparse.Namespace, tmp: Path, device: torch.device = CPU
                         ) -> dict[str, tuple[object, str]]:
    """The extraction configurations on `device`: name -> (embedder, the GEMM precision it is normalised by).
    fp32, bf16, bf16 with the model compiled as `--compile on` compiles extraction (dynamic shapes, unless
    --skip-compile), and on the CPU the ONNX Runtime path (deploy.OnnxEmbedder, fp32; where onnx is
    installed)."""
    from data.features import frontend_from_config
    from deploy import OnnxEmbedder, WaveEmbedding, export_onnx, onnx_session
    from embedding import Embedder, Extraction

    cfg = Config(model="ecapa_tdnn", sample_rate=SAMPLE_RATE)
    torch.manual_seed(args.seed)
    model = build_model(cfg.model, n_mels=cfg.n_mels).eval().to(device)
    frontend = frontend_from_config(cfg).eval().to(device)
    extraction = Extraction(batch_size=args.eval_batch_size, bucket_crop=args.bucket_crop)
    embedders = {p: (Embedder(model, frontend, device, p, extraction, compile="off"), p) for p in ("fp32", "bf16")}
    if not args.skip_compile:
        twin = build_model(cfg.model, n_mels=cfg.n_mels).eval().to(device)
        twin.load_state_dict(model.state_dict())
        embedders["bf16 compiled"] = (Embedder(twin, frontend, device, "bf16", extraction, compile="on"), "bf16")
    if device.type != "cpu":
        return embedders
    try:
        path = tmp / "model.onnx"
        export_onnx(WaveEmbedding(frontend, model).eval(), 0.1 * torch.randn(2, 3 * SAMPLE_RATE), path, {})
        embedders["onnxruntime fp32"] = (OnnxEmbedder(model, frontend, CPU, "fp32", extraction,
                                                      session=onnx_session(path, args.threads)), "fp32")
    except Exception as err:  # noqa: BLE001 -- no onnx packages, or an exporter failure: the row is left out
        log.warning("no ONNX Runtime row: %s", str(err).splitlines()[0][:200])
    return embedders


def extraction_rtfs(args: argparse.Namespace, device: torch.device = CPU
                    ) -> tuple[dict[str, float], dict[str, str], dict[str, float], float, int, dict[str, float]]:
    """Real-time factor of embedding.Embedder.extract (ECAPA-TDNN C=512) per configuration, the best of
    --passes passes, each over its own random files (so every pass meets new lengths); each configuration's
    GEMM precision; the GEMM rates measured around the passes; the seconds of audio and the number of files of
    one pass; the warm-up seconds (the compiled configuration's compile)."""
    import soundfile

    configure_malloc()  # as inference.py does
    rng = np.random.default_rng(args.seed)
    gemm = Gemm()
    with tempfile.TemporaryDirectory(prefix="bench_speed_") as tmp:
        embedders = extraction_embedders(args, Path(tmp), device)
        rtfs, warmup = dict.fromkeys(embedders, 0.0), {}
        files = args.extract_files if device.type == "cpu" else args.gpu_extract_files
        sync = synchronizer(device)
        warm_files = write_random_audio(Path(tmp) / "warmup", 40, rng)  # several batch sizes and lengths
        for name, (embedder, _) in embedders.items():
            started = time.perf_counter()
            embedder.extract(warm_files)
            warmup[name] = time.perf_counter() - started
            log.info("extraction %s: warm-up %.1f s", name, warmup[name])
        for i in range(args.passes):
            paths = write_random_audio(Path(tmp) / f"pass{i}", files, rng)
            seconds = sum(soundfile.info(p).duration for p in paths.values())
            log.info("extraction pass %d: %d files, %.0f s of audio, batches of %d, bucket_crop %g", i + 1,
                     len(paths), seconds, args.eval_batch_size, args.bucket_crop)
            for name, (embedder, _) in embedders.items():
                if device.type == "cpu":
                    gemm.measure(2)
                sync()
                started = time.perf_counter()
                embedder.extract(paths)  # no cache: every call extracts
                sync()
                rtf = seconds / (time.perf_counter() - started)
                rtfs[name] = max(rtfs[name], rtf)
                log.info("extraction %s: %.0fx real time", name, rtf)
        if device.type == "cpu":
            gemm.measure(2)
    precisions = {name: precision for name, (_, precision) in embedders.items()}
    return rtfs, precisions, gemm.rates, seconds, len(paths), warmup


# --- the table -------------------------------------------------------------------------------------------

def verdict(ratio: float, target: float) -> str:
    return f">= {target:g}x: {'met' if ratio >= target else 'NOT met'}"


class Table:
    HEADER = ["measurement", "model", "precision", "allocator", "optimizer / setting", "time (median)", "rate",
              "ratio", "target"]

    def __init__(self) -> None:
        self.rows: list[list[str]] = []

    def add(self, *cells: str) -> None:
        self.rows.append([*cells, *[""] * (len(self.HEADER) - len(cells))])

    def step(self, label: str, model: str, config: str, malloc: str, result: dict, ratio: str = "",
             target: str = "") -> float:
        """A training-step row; returns the fastest step's time."""
        precision, optimizer = config.split(":")
        seconds = min(result["times"][config])
        rate = result["flops"][config] / seconds / 1e9
        median = statistics.median(result["times"][config])
        self.add(label, model, precision, malloc, "fused Adam" if optimizer == "fused" else "for-loop Adam",
                 f"{seconds:.3f} s ({median:.3f})",
                 f"{rate:.0f} GFLOP/s ({100 * rate / result['gemm'][precision]:.0f}% of GEMM)", ratio, target)
        return seconds

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.HEADER) + " |", "|" + "---|" * len(self.HEADER)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in self.rows])


def train_rows(table: Table, args: argparse.Namespace) -> None:
    fastest = min
    first = args.models[0]
    for model in dict.fromkeys(args.models):
        targets = model == "ecapa_tdnn"
        a = None
        if model == first and not args.skip_allocator:
            plain = run_train_worker(model, ["fp32:loop", "bf16:loop"], "default", args)
            a = table.step("train step A (baseline)", model, "fp32:loop", "glibc default", plain, "1.00")
            table.step("train step", model, "bf16:loop", "glibc default", plain,
                       f"{a / fastest(plain['times']['bf16:loop']):.2f}x A")
        configs = ["fp32:loop", "fp32:fused", "bf16:fused"] if a else ["fp32:fused", "bf16:fused"]
        tuned = run_train_worker(model, configs, "tuned", args)
        if a:
            loop = table.step("train step", model, "fp32:loop", "configure_malloc", tuned,
                              f"{a / fastest(tuned['times']['fp32:loop']):.2f}x A (allocator, across processes)")
        b = fastest(tuned["times"]["fp32:fused"])
        table.step("train step B" if a else "train step", model, "fp32:fused", "configure_malloc", tuned,
                   f"{a / b:.2f}x A; {loop / b:.2f}x the for-loop Adam row" if a else "")
        c = fastest(tuned["times"]["bf16:fused"])
        ratio, target = f"{b / c:.2f}x B" if a else f"{b / c:.2f}x fp32", verdict(b / c, 1.6) if targets else ""
        if a:
            ratio = f"{a / c:.2f}x A; {ratio}"
            target = f"C/A {verdict(a / c, 2.5)}; C/B {target}" if targets else ""
        table.step("train step C (default)" if a else "train step", model, "bf16:fused", "configure_malloc", tuned,
                   ratio, target)


def at_most(ratio: float, target: float) -> str:
    return f"<= {target:g}x: {'met' if ratio <= target else 'NOT met'}"


def versus_rows(table: Table, args: argparse.Namespace) -> None:
    """The default step (eager, and compiled unless --skip-compile) against the wespeaker-style fp32 step."""
    configs = ["reference", "default"] + ([] if args.skip_compile else ["compiled"])
    result = run_versus_worker(configs, args)
    reference = min(result["times"]["reference"])
    labels = {"reference": ("train step: wespeaker-style ECAPA-TDNN", "fp32", "literal pooling, default Adam"),
              "default": ("train step: the default", "bf16", "fused Adam, eager"),
              "compiled": ("train step: the default, --compile on", "bf16", "fused Adam, compiled")}
    for config in configs:
        label, precision, setting = labels[config]
        times = result["times"][config]
        warm = f"; compile {result['warmup'][config]:.0f} s" if config == "compiled" else ""
        ratio = min(times) / reference
        table.add(label, "ecapa_tdnn", precision, "configure_malloc", f"{setting}, AAM {args.versus_speakers}{warm}",
                  f"{min(times):.3f} s ({statistics.median(times):.3f})", "",
                  f"{ratio:.2f}x the wespeaker-style step" if config != "reference" else "1.00",
                  at_most(ratio, 0.40) if config != "reference" else "")


def epoch_rows(table: Table, args: argparse.Namespace) -> None:
    """train.py's epoch against batches x the model-only step, per --epoch-variants (train.py flags)."""
    for variant in args.epoch_variants:
        result = run_epoch_worker(args, variant.split())
        step = statistics.median(result["model_steps"])
        ratio = result["epoch"] / (result["batches"] * step)
        parts = result["parts"]
        loop = parts["train_epoch"] - parts["forward_backward"] - parts["optimizer_step"]
        writes = sum(parts.get(k, 0.0) for k in ("save_checkpoint", "write_log", "write_curves"))
        breakdown = (f"fbank+SpecAugment {parts['forward']:.1f} s, model+head fwd/bwd "
                     f"{parts['forward_backward'] - parts['forward']:.1f} s, Adam {parts['optimizer_step']:.1f} s, "
                     f"loader waits and the loop {loop:.1f} s, validation {parts.get('validate', 0.0):.1f} s, "
                     f"checkpoint+log+curves {writes:.1f} s")
        table.add("epoch of train.py (demo corpus) vs batches x model-only step", "ecapa_tdnn", "auto",
                  "configure_malloc", f"{variant or 'defaults'}: {breakdown}",
                  f"{result['epoch']:.1f} s / ({result['batches']} x {step:.3f} s)", "",
                  f"{ratio:.2f}x", at_most(ratio, 1.10))


def gpu_epoch_row(table: Table, args: argparse.Namespace) -> None:
    """--gpu-epochs epochs of train.py on CUDA at batch 256 without validation (the training pass, checkpoint and
    log), fed by its own DataLoader (--gpu-workers processes reading and cropping; fbank and SpecAugment on the
    GPU), the model compiled; one row per --gpu-workers entry. After the first epoch (the workers' start) the
    loader's workers are warm (persistent): the later epochs' training pass gives the samples/s, the share of it
    spent waiting for batches and the GPU's mean utilisation (sampled every 0.1 s), against the model-only step
    on a fixed batch in the same process."""
    for workers in args.gpu_workers:
        flags = ["--device", "cuda", "--batch-size", "256", "--num-workers", str(workers), "--val-trials=",
                 "--compile", "on"]  # the fastest step: the hardest for the loader to keep busy
        result = run_epoch_worker(args, flags, args.gpu_epochs)
        skip = 1 if args.gpu_epochs > 1 else 0  # the workers' start, where a later epoch exists
        later = result["parts_each"][skip:]
        passes = sum(p["train_epoch"] for p in later)
        waits = sum(p["train_epoch"] - p["forward_backward"] - p["optimizer_step"] for p in later)
        rate = len(later) * result["batches"] * result["batch_size"] / passes
        step_rate = result["batch_size"] / statistics.median(result["model_steps"])
        readings = [u for u in result["gpu_utilisation_each"][skip:] if u is not None]
        utilisation = f"{statistics.fmean(readings):.0f}%" if readings else "n/a"
        first = result["parts_each"][0]["train_epoch"]
        table.add("GPU epochs of train.py (demo corpus), batch 256, real loader", "ecapa_tdnn", "auto", "",
                  f"{workers} loader workers, {'compiled' if result['compiled'] else 'eager'}; epochs "
                  f"{skip + 1}-{args.gpu_epochs}: loader waits and the loop {waits:.2f} s of the training passes' "
                  f"{passes:.2f} s (epoch 1, the workers' start: {first:.1f} s)",
                  f"{passes / len(later):.2f} s a pass", f"{rate:.0f} samples/s (training pass)",
                  f"{rate / step_rate:.2f}x the model-only step's {step_rate:.0f} samples/s; GPU utilisation "
                  f"{utilisation}", "")


def gpu_rows(table: Table, args: argparse.Namespace) -> None:
    """Training steps on CUDA on a fixed fbank batch (--speakers AAM classes), at each of --gpu-batches (256 and
    the recipe's 64): the default step (bf16 where native, fused Adam) eager, and with the model compiled as
    train.py's --compile on does (static shapes), against the wespeaker-style step (fp32 under torch's defaults,
    the literal attentive pooling, torch's default Adam; the versus rows' reference): samples/s of each, the
    compile's seconds and the steps that repay it. After the warm-up (the compiled one's first step is its
    compile, timed) the configurations alternate in rounds of 10 steps, --gpu-rounds rounds, the median round
    taken; the GPU's utilisation is read right after the rounds."""
    from utils import resolve_precision

    device = torch.device("cuda")
    default = resolve_precision("auto", device)
    configs = ["reference", "default"] + ([] if args.skip_compile else ["compiled"])
    for batch in args.gpu_batches:
        generator = torch.Generator(device=device).manual_seed(args.seed)
        feats = torch.randn(batch, CROP_FRAMES, N_MELS, device=device, generator=generator)  # (B, T, F)
        labels = torch.randint(0, args.speakers, (batch,), device=device, generator=generator)
        steps, warmup = {}, {}
        for config in configs:
            steps[config] = comparison_step(config, feats, labels, args.speakers, args.seed, default)
            torch.cuda.synchronize()
            started = time.perf_counter()
            steps[config]()
            torch.cuda.synchronize()
            warmup[config] = time.perf_counter() - started
            for _ in range(2):
                steps[config]()
            log.info("GPU batch %d, %s: first step %.1f s", batch, config, warmup[config])
        rounds: dict[str, list[float]] = {c: [] for c in configs}
        for _ in range(args.gpu_rounds):
            for config in configs:
                torch.cuda.synchronize()
                started = time.perf_counter()
                for _ in range(10):
                    steps[config]()
                torch.cuda.synchronize()
                rounds[config].append((time.perf_counter() - started) / 10)
        utilisation = gpu_utilisation()
        reference, eager = statistics.median(rounds["reference"]), statistics.median(rounds["default"])
        settings = {"reference": ("fp32", "wespeaker-style: literal pooling, default Adam"),
                    "default": (default, "the default: fused Adam, eager"),
                    "compiled": (default, "the default: fused Adam, compiled")}
        for config in configs:
            seconds = statistics.median(rounds[config])
            precision, setting = settings[config]
            setting = f"{torch.cuda.get_device_name()}, AAM {args.speakers}, {setting}"
            ratio, target = "1.00", ""
            if config != "reference":
                ratio, target = f"{seconds / reference:.2f}x the wespeaker-style step", at_most(seconds / reference,
                                                                                                 0.40)
            if config == "default":
                ratio += f"; GPU utilisation {utilisation} (after the rounds)"
            if config == "compiled":
                setting += f"; compile {warmup[config]:.0f} s"
                saved = eager - seconds
                repay = f"repaid after {warmup[config] / saved:.0f} steps" if saved > 0 else "never repaid"
                ratio += f"; {seconds / eager:.2f}x eager's; {repay}"
            table.add(f"GPU train step, batch {batch}", "ecapa_tdnn", precision, "", setting,
                      f"{1000 * seconds:.1f} ms", f"{batch / seconds:.0f} samples/s", ratio, target)


def gpu_utilisation() -> str:
    """The GPU's utilisation in %, from torch (pynvml) or nvidia-smi; "n/a" where neither answers."""
    try:
        return f"{torch.cuda.utilization()}%"
    except Exception:  # noqa: BLE001 -- no pynvml: ask nvidia-smi
        pass
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=10, check=True)
        return f"{done.stdout.split()[0]}%"
    except (OSError, subprocess.SubprocessError, IndexError):
        return "n/a"


def extraction_rows(table: Table, args: argparse.Namespace) -> None:
    rtfs, precisions, gemm, seconds, files, warmup = extraction_rtfs(args)
    setting = f"{files} files of 2-5 s, batch {args.eval_batch_size}, bucket_crop {args.bucket_crop:g}"
    for name, rtf in rtfs.items():
        precision = precisions[name]
        ratio = f"{rtf / rtfs['fp32']:.2f}x fp32; {rtf / rtfs['bf16']:.2f}x bf16; " if name != "fp32" else ""
        compile_note = f"; compile (warm-up) {warmup[name]:.0f} s" if "compiled" in name else ""
        table.add("extraction (read + fbank + model)", "ecapa_tdnn", name, "configure_malloc", setting + compile_note,
                  f"{seconds / rtf:.2f} s for {seconds:.0f} s of audio", f"{rtf:.0f}x real time",
                  f"{ratio}{rtf / gemm[precision]:.2f} audio s per GEMM GFLOP",
                  verdict(rtf, 600) if name != "fp32" else "")


def gpu_extraction_rows(table: Table, args: argparse.Namespace) -> None:
    """Extraction on CUDA (files read and cut on the CPU, fbank and model on the GPU): fp32, bf16, and bf16
    compiled as `--compile on` compiles extraction (dynamic shapes), over --gpu-extract-files files a pass."""
    rtfs, _, _, seconds, files, warmup = extraction_rtfs(args, torch.device("cuda"))
    setting = (f"{torch.cuda.get_device_name()}; {files} files of 2-5 s, batch {args.eval_batch_size}, "
               f"bucket_crop {args.bucket_crop:g}")
    for name, rtf in rtfs.items():
        compile_note = f"; compile (warm-up) {warmup[name]:.0f} s" if "compiled" in name else ""
        ratio = f"{rtf / rtfs['bf16']:.2f}x bf16 eager" if "compiled" in name else ""
        table.add("GPU extraction (read + fbank + model)", "ecapa_tdnn", name, "", setting + compile_note,
                  f"{seconds / rtf:.2f} s for {seconds:.0f} s of audio", f"{rtf:.0f}x real time", ratio, "")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(description=__doc__.split("\n")[0], allow_abbrev=False)  # errors: one line, exit 2
    parser.add_argument("--models", nargs="+", default=["ecapa_tdnn", "resnet34"], choices=list(MODELS),
                        metavar="MODEL", help="the first gets rows A, B, C, the others B and C (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per configuration (default: 3)")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch (default: 64)")
    parser.add_argument("--speakers", type=int, default=5994, help="AAM head classes (default: 5994, VoxCeleb2 dev)")
    parser.add_argument("--versus-speakers", type=int, default=1000,
                        help="AAM head classes of the wespeaker-style comparison (default: %(default)s, the issue's)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all CPUs)")
    parser.add_argument("--gemm-repeats", type=int, default=10)
    parser.add_argument("--extract-files", type=int, default=160, help="random wav files per extraction pass "
                                                                         "(default: 160)")
    parser.add_argument("--passes", type=int, default=2, help="extraction passes, the best taken (default: 2)")
    parser.add_argument("--eval-batch-size", type=int, default=Config().eval_batch_size,
                        help="files per extraction batch (default: config.py's eval_batch_size, %(default)s)")
    parser.add_argument("--bucket-crop", type=float, default=0.1,
                        help="eval_bucket_crop of the extraction rows (default: %(default)s)")
    parser.add_argument("--epoch-corpus", default="corpora/demo/train/wav",
                        help="training data of the epoch rows (default: %(default)s)")
    parser.add_argument("--epoch-variants", nargs="+", default=[""], metavar="FLAGS",
                        help="train.py flags of each epoch row, one quoted string each (default: one row, defaults)")
    parser.add_argument("--gpu-workers", type=int, nargs="+", default=[min(8, max(1, (os.cpu_count() or 2) - 2))],
                        help="DataLoader workers of each GPU epoch row (default: CPUs - 2, at most 8)")
    parser.add_argument("--gpu-epochs", type=int, default=4,
                        help="epochs of the GPU epoch rows, the first (the workers' start) left out (default: 4)")
    parser.add_argument("--gpu-batches", type=int, nargs="+", default=[256, 64],
                        help="batch sizes of the GPU step rows (default: 256 64)")
    parser.add_argument("--gpu-rounds", type=int, default=5,
                        help="rounds of 10 steps, eager and compiled alternating, of the GPU step rows (default: 5)")
    parser.add_argument("--gpu-extract-files", type=int, default=1000,
                        help="random wav files per extraction pass of the GPU rows (default: %(default)s)")
    parser.add_argument("--cuda-only", action="store_true",
                        help="only the GPU rows (and the GEMM reference): none of the CPU's")
    parser.add_argument("--skip-allocator", action="store_true", help="no glibc-default subprocess (row A)")
    parser.add_argument("--skip-training", action="store_true", help="no A/B/C training-step rows")
    parser.add_argument("--skip-versus", action="store_true", help="no wespeaker-style comparison rows")
    parser.add_argument("--skip-compile", action="store_true", help="no compiled rows (each compile takes minutes)")
    parser.add_argument("--skip-epoch", action="store_true", help="no end-to-end epoch rows")
    parser.add_argument("--skip-extraction", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # the subprocess side
    parser.add_argument("--versus", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--epoch", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--epoch-dir", help=argparse.SUPPRESS)
    parser.add_argument("--epoch-flags", default="", help=argparse.SUPPRESS)
    parser.add_argument("--epoch-count", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--configs", nargs="+", default=["fp32:fused", "bf16:fused"], help=argparse.SUPPRESS)
    parser.add_argument("--malloc", choices=("default", "tuned"), default="tuned", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cuda_only and not torch.cuda.is_available():
        parser.error("--cuda-only: CUDA is not available here")
    for name in ("gpu_epochs", "gpu_rounds", "gpu_extract_files"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: must be at least 1, got {getattr(args, name)}")
    if min(args.gpu_batches) < 1 or min(args.gpu_workers) < 0:
        parser.error("--gpu-batches must be at least 1 and --gpu-workers at least 0")
    if args.worker:
        worker = versus_worker if args.versus else epoch_worker if args.epoch else train_worker
        print(json.dumps(worker(args)))
        return
    load_before = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    log.info("GEMM reference: 1x1 Conv1d 512 -> 1536, batch 64 x %d frames, fp32 and bf16", CROP_FRAMES)
    reference = Gemm()
    reference.measure(args.gemm_repeats)
    gemm = reference.rates
    table = Table()
    for precision, rate in gemm.items():
        table.add("GEMM: 1x1 Conv1d 512->1536, 64 x 200 frames", "", precision, "", "", "", f"{rate:.0f} GFLOP/s",
                  f"{rate / gemm['fp32']:.2f}x fp32" if precision != "fp32" else "")
    cpu = not args.cuda_only
    if cpu and not args.skip_training:
        train_rows(table, args)
    if cpu and not args.skip_versus:
        versus_rows(table, args)
    if cpu and not args.skip_epoch:
        epoch_rows(table, args)
    if cpu and not args.skip_extraction:
        extraction_rows(table, args)
    if torch.cuda.is_available():
        if not args.skip_training:
            gpu_rows(table, args)
        if not args.skip_extraction:
            gpu_extraction_rows(table, args)
        if not args.skip_epoch:
            gpu_epoch_row(table, args)
    table.add("conditions", "", "", "", "", "", "", "",
              f"{os.cpu_count()} CPUs, {args.threads} threads, torch {torch.__version__}; train: batch "
              f"{args.batch_size} x {CROP_FRAMES} frames, fastest (median) of {args.steps} steps; 1-min load average "
              f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(table.markdown())


if __name__ == "__main__":
    run_main(main)
