"""Train a speaker-embedding network with a margin softmax head.

    python train.py                                   # ECAPA-TDNN on the demo corpus (generated on first use)
    python train.py --model resnet18 --loss am --scale 30 --margin 0.2 --optimizer sgd --lr 0.1
    python train.py --resume                          # continue the newest run from its latest checkpoint
    torchrun --nproc_per_node=4 train.py ...          # data parallel (nccl on GPUs, gloo on CPU); README: multi-node
    python train.py --checkpoint-every 1000 --accumulate 2   # mid-epoch checkpoints; 2 batches per optimizer step

Writes exp/<name>/: config.yaml (resolved), train_list.jsonl, log.csv (one row per epoch),
checkpoints/epoch_NNNN.pt (one per epoch, the last `keep_checkpoints` kept; with checkpoint_every, also
epoch_NNNN-step_SSSSSS.pt within an epoch) and checkpoints/best.pt (lowest validation EER), then the final
test of best.pt: results.json and everything evaluation.evaluate_checkpoint writes (the same call as
`python inference.py --checkpoint exp/<name>`). Per batch: fbank and SpecAugment (on the device), model,
head, backward; an optimizer step every `accumulate` batches.

The steps of `train`: open the run folder (new, or resumed), the training data, the trainer (model, head,
optimizer), the epochs (train, validate, save), the final check of the replicas and the test.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import itertools
import json
import logging
import math
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from config import MODEL_KEYS, Config, build_config, check_model_keys, make_parser, parse_args, save_config, to_dict
from curves import write_curves
from data.augment import build_augmenter
from data.corpus import (
    Utterance,
    cap_per_speaker,
    inject_label_noise,
    load_index,
    save_index,
    speakers_of,
    write_moved_labels,
)
from data.crops import TrainDataset, speed_speakers
from data.features import FrontEnd, fbank_options_from_config, frontend_from_config, num_samples_for_frames
from data.samplers import BalancedSampler, EpochSampler, LossRecord, leave_out
from distributed import Dist, broadcast, finish_distributed, init_distributed
from embedding import (
    COMPILE_COST,
    CPU_STEP_FLOPS,
    Embedder,
    compile_forward,
    compile_pays,
    extraction_from_config,
)
from evaluation import (
    EvalPlan,
    TrialList,
    checkpoint_embedder,
    evaluate,
    evaluate_checkpoint,
    load_trial_lists,
    row_record,
)
from loss import MarginSchedule, head_from_config
from metrics import P_TARGETS
from models import model_from_config
from runs import (
    average_checkpoints,
    find_checkpoint,
    find_resumable,
    latest_checkpoint,
    load_checkpoint,
    load_trained,
    new_run_dir,
    restore_best,
    save_checkpoint,
)
from scoring import Scorer
from utils import (
    UserError,
    append_table_row,
    atomic_write_text,
    autocast,
    configure_malloc,
    remove_stale_temps,
    resolve_device,
    resolve_precision,
    rng_state,
    run_main,
    seed_everything,
    set_rng_state,
)

log = logging.getLogger("voiceprint")


# --- distributed (the process group itself: distributed.py) ---------------------------------------------

def sampler_draws(sampler: torch.utils.data.Sampler) -> torch.Tensor:
    """(n, 2) int64: a rank's draws this epoch, each an utterance and its crop seed."""
    return torch.tensor([draw for batch in sampler for draw in batch], dtype=torch.int64).reshape(-1, 2)


def repeated_draws(draws: Sequence[torch.Tensor]) -> int:
    """How many of the ranks' draws (sampler_draws) repeat another: an utterance drawn twice with the same
    crop seed. The balanced sampler may pad two ranks' batches with one utterance, with other crop seeds."""
    every = torch.cat(list(draws))
    return len(every) - len(torch.unique(every, dim=0))


def check_disjoint_shards(sampler: torch.utils.data.Sampler, d: Dist, device: torch.device) -> int:
    """Under DDP, verify that the ranks' shards of this epoch share no draw; returns this rank's count."""
    draws = sampler_draws(sampler)
    if d.distributed:  # every rank has the same number of batches; nccl gathers CUDA tensors only, gloo CPU ones
        gathered = [torch.empty_like(draws, device=device) for _ in range(d.world_size)]
        dist.all_gather(gathered, draws.to(device))
        if repeated_draws([g.cpu() for g in gathered]):
            raise RuntimeError("DDP ranks drew overlapping training shards")
    return len(draws)


def weights_digest(module: nn.Module) -> str:
    """sha1 of the trained parameters. (BatchNorm running statistics are not compared: DDP broadcasts
    rank 0's buffers at every forward, so after the last step each rank holds its own; rank 0's are saved.)"""
    digest = hashlib.sha1()
    for value in module.parameters():
        digest.update(value.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_replicas_in_sync(module: nn.Module, d: Dist) -> None:
    """Every rank must end with bit-identical weights; a divergence is a bug, never a silent result."""
    digests: list[str | None] = [None] * d.world_size
    dist.all_gather_object(digests, weights_digest(module))
    if len(set(digests)) != 1:
        raise RuntimeError(f"DDP replicas diverged: weight digests {digests}")
    if d.main:
        log.info("all %d replicas hold identical weights (sha1 %s)", d.world_size, digests[0][:12])


def broadcast_buffers(module: nn.Module, d: Dist) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank. After a step each rank holds the
    statistics of its own batch (DDP broadcasts rank 0's only at the next forward, so training is unchanged);
    an evaluation shared out over the ranks must embed every file with the model rank 0 saves."""
    if d.distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def all_mean(values: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.distributed:
        dist.all_reduce(values)
        values = values / d.world_size
    return values


# --- optimisation ----------------------------------------------------------------------------------------

class Trainee(nn.Module):
    """Model and head as one module, so that DDP sees (and synchronises) every trained weight."""

    def __init__(self, model: nn.Module, head: nn.Module):
        super().__init__()
        self.model, self.head = model, head

    def forward(self, feats: torch.Tensor, labels: torch.Tensor, margin: float,
                reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
        # (loss: () mean, or (B,) with reduction "none"; logits (B, num_speakers))
        return self.head(self.model(feats), labels, margin, reduction)


def build_optimizer(cfg: Config, params: Sequence[nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":  # fused: one kernel for all parameters (bench_speed measures it against the loop)
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)


def learning_rate(cfg: Config, epoch: int, progress: float) -> float:
    """lr * lr_decay^epoch, times a linear warm-up over the first `warmup_epochs`; `progress` in [0, 1) is
    the position within the epoch. A pure function of the position: resuming needs no scheduler state."""
    position = epoch + progress
    warmup = min(1.0, position / cfg.warmup_epochs) if cfg.warmup_epochs > 0 else 1.0
    return cfg.lr * cfg.lr_decay ** epoch * warmup


def margin_schedule(cfg: Config) -> Callable[[float], float]:
    """The margin at a (fractional) epoch: the ramp of cfg.margin_ramp, or cfg.margin throughout."""
    return MarginSchedule(cfg.margin, *cfg.margin_ramp) if cfg.margin_ramp[1] > 0 else (lambda _: cfg.margin)


def step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """The seed of the on-device randomness (dither, SpecAugment) of batch `step` of `epoch` on `rank`: every
    rank draws its own masks and dither, and a resumed run draws the same ones again."""
    return int(np.random.SeedSequence([seed, epoch, step, rank]).generate_state(1, np.uint64)[0] >> 1)


# --- the run folder --------------------------------------------------------------------------------------

def open_run(cfg: Config, run: Path | None, d: Dist) -> tuple[Path, dict | None]:
    """The run folder and, when resuming, its latest checkpoint. A new run never writes into a folder that
    holds another run's checkpoints or results."""
    if cfg.resume:
        run = run or find_resumable(cfg.exp_dir, cfg.name)
        state = load_checkpoint(latest_checkpoint(run))
        if d.main:  # a kill inside the last save may have left best.pt and log.csv behind the checkpoint
            remove_stale_temps(run)
            restore_best(run, state)
            write_log(run, state["log"])
        return run, state
    run = run or new_run_dir(cfg)
    if d.main:
        remove_stale_temps(run)  # a first checkpoint's, killed while written, is no earlier run
        taken = [p for p in (run / "checkpoints", run / "results.json") if p.exists() and any(_entries(p))]
        if taken:
            raise UserError(f"{run}: holds an earlier run ({taken[0].name}); pass --resume to continue it, or "
                            f"another --name")
    return run, None


def _entries(path: Path) -> list[Path]:
    return list(path.iterdir()) if path.is_dir() else [path]


def check_inputs(cfg: Config) -> tuple[list[TrialList], list[TrialList]]:
    """Fail before training, not after it: the corpus folders, and every trial list with all its files."""
    if not Path(cfg.train_data).is_dir():
        raise UserError(f"{cfg.train_data}: no such corpus folder")
    val = load_trial_lists([cfg.val_trials], cfg.val_data) if cfg.val_trials else []
    return val, load_trial_lists(cfg.test_trials, cfg.test_data) if cfg.test_trials else []


def ensure_demo_corpus(cfg: Config) -> None:
    """Generate (or refresh) the demo corpus with cfg.demo_generator on first use, when training data points
    inside it."""
    root = Path(cfg.demo_corpus)
    if Path(cfg.train_data).resolve().is_relative_to(root.resolve()):
        from data.synth_harmonic import ensure_generated

        ensure_generated(root, cfg.demo_generator)


LOG_FIELDS = ["epoch", "steps", "lr", "margin", "loss", "accuracy", "val_eer", "val_min_dcf", "seconds",
              "left_out", "left_out_precision", "left_out_recall"]  # the last three: in-training filtering


def write_log(run: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LOG_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(run / "log.csv", buffer.getvalue())


# --- training data ---------------------------------------------------------------------------------------

@dataclass
class TrainingData:
    utterances: list[Utterance]
    speakers: list[str]
    classes: list[str]  # the head's classes: the speakers, or (speaker, speed) pairs under speed perturbation
    val_lists: list[TrialList]
    moved: frozenset[str] = frozenset()  # keys of the utterances label noise moved (scores in-training filtering)


def training_data(cfg: Config, run: Path, utterances: Sequence[Utterance] | None, d: Dist,
                  moved: Collection[str] = ()) -> TrainingData:
    """Rank 0 checks every input, writes the config and builds (and caches) the corpus index; then every rank
    reads the index, caps it per speaker and injects the configured label noise (recorded in the run), and gets
    rank 0's validation lists. `moved`: the keys label noise moved in a given `utterances` list."""
    val_lists: list[TrialList] = []
    if d.main:
        ensure_demo_corpus(cfg)
        val_lists, _ = check_inputs(cfg)
        run.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run / "config.yaml")
        if utterances is None:
            load_index(cfg.train_data, cfg.sample_rate)  # scan once, cache for the other ranks
    if d.distributed:
        dist.barrier()  # the corpus and its index exist before the other ranks read them
    val_lists = broadcast(val_lists, d)  # every rank embeds its share of the validation files
    if utterances is None:
        utterances = cap_per_speaker(load_index(cfg.train_data, cfg.sample_rate), cfg.utts_per_speaker, cfg.seed)
        utterances, moved_labels = inject_label_noise(utterances, cfg.label_noise, cfg.seed)
        moved = [m.key for m in moved_labels]
        if d.main and cfg.label_noise > 0:
            write_moved_labels(moved_labels, run / "label_noise.txt")
    speakers = speakers_of(utterances)
    if d.main:
        save_index(utterances, run / "train_list.jsonl")
    classes = speed_speakers(speakers) if cfg.speed_perturb else speakers
    return TrainingData(list(utterances), speakers, classes, val_lists, frozenset(moved))


def make_loader(cfg: Config, data: TrainingData, d: Dist, pin_memory: bool) -> torch.utils.data.DataLoader:
    num_samples = num_samples_for_frames(cfg.num_frames, fbank_options_from_config(cfg))
    augment = build_augmenter(cfg.musan, cfg.rirs, cfg.sample_rate, cfg.aug_prob, cfg.noise_snr, cfg.music_snr,
                              cfg.babble_snr, cfg.babble_speakers)
    dataset = TrainDataset(data.utterances, data.speakers, num_samples, cfg.sample_rate, augment=augment,
                           speed_perturb=cfg.speed_perturb)
    if cfg.sampler == "balanced":
        sampler = BalancedSampler(dataset.labels, cfg.batch_size, cfg.utts_per_speaker_in_batch, cfg.seed,
                                  d.rank, d.world_size)
    else:
        sampler = EpochSampler(len(dataset), cfg.batch_size, cfg.seed, d.rank, d.world_size)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.num_workers,
                                       pin_memory=pin_memory, persistent_workers=cfg.num_workers > 0)


# --- the trainer -----------------------------------------------------------------------------------------

@dataclass
class Trainer:
    """What the epochs work on: the model and head (and their DDP wrapper), the front end, the optimizer and
    the data, on one device at one precision; and the progress so far (the log's rows, the best val EER)."""
    cfg: Config
    d: Dist
    device: torch.device
    precision: str
    trainee: Trainee
    ddp: nn.Module  # trainee, wrapped by DDP under torchrun
    frontend: FrontEnd
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    loader: torch.utils.data.DataLoader
    margin: Callable[[float], float]
    start_epoch: int = 0
    start_batch: int = 0  # resumed from a mid-epoch checkpoint: the batches of start_epoch already trained
    start_totals: list[float] | None = None  # ...and this rank's running totals over them (train_epoch)
    rows: list[dict] = field(default_factory=list)
    best_eer: float = math.inf
    best_epoch: int = 0
    record: LossRecord | None = None  # in-training filtering (filter_share > 0): each utterance's latest loss
    pending: list = field(default_factory=list)  # ...this epoch's (items, per-sample losses on the device) not
    # yet added to it (flush_losses)
    weights: torch.Tensor | None = None  # ...downweight mode: this epoch's loss weight per utterance (N,)


def build_trainer(cfg: Config, data: TrainingData, d: Dist, resume_state: dict | None) -> Trainer:
    device = resolve_device(cfg.device)
    if device.type == "cuda" and d.distributed:
        device = torch.device("cuda", d.local_rank)
    precision = resolve_precision(cfg.precision, device)
    seed_everything(cfg.seed)  # identical initial weights on every rank
    model = model_from_config(cfg)
    trainee = Trainee(model, head_from_config(cfg, model.embed_dim, len(data.classes))).to(device)
    if cfg.init_from and not resume_state:  # a resumed run continues its own weights
        init_from_checkpoint(trainee, cfg, data.classes, d)
    optimizer = build_optimizer(cfg, list(trainee.parameters()))
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    t = Trainer(cfg, d, device, precision, trainee, trainee, frontend_from_config(cfg).to(device), optimizer, scaler,
                make_loader(cfg, data, d, pin_memory=device.type == "cuda"), margin_schedule(cfg))
    t.record = LossRecord.empty(len(data.utterances)) if cfg.filter_share > 0 else None
    if resume_state:
        restore(t, resume_state)
    compile_for_training(t)  # before DDP wraps it: DDP then calls the compiled forward
    if d.distributed:
        t.ddp = nn.parallel.DistributedDataParallel(trainee, device_ids=[device.index] if device.type == "cuda"
                                                    else None)
    return t


def compile_for_training(t: Trainer) -> None:
    """config `compile`: the model's training forward (and backward) through torch.compile with static shapes
    (every batch is batch_size x num_frames); validation stays eager (embedding.CompiledForward). auto compiles
    where the run's remaining batches repay the compile (embedding.compile_pays with the device type's measured
    compile time and saving, COMPILE_COST; the step's time from eager_step_seconds; rank 0's decision for every
    rank). The compile happens here, on a probe batch, so that its time is logged and a failure falls back to
    eager (one log line) before the first epoch."""
    cfg, model = t.cfg, t.trainee.model
    batches = (cfg.epochs - t.start_epoch) * len(t.loader.batch_sampler) - t.start_batch
    if cfg.compile == "off" or batches <= 0:
        return
    if cfg.compile == "auto":
        seconds = eager_step_seconds(t)
        compile_seconds, ratio = COMPILE_COST[t.device.type]
        pays = broadcast(compile_pays(batches, seconds, compile_seconds, ratio), t.d)
        if t.d.main:
            log.info("compile auto: %d batches x ~%.3f s eager, ~%.0f%% saved = %.0f s against a ~%.0f s compile: %s",
                     batches, seconds, 100 * (1 - ratio), batches * seconds * (1 - ratio), compile_seconds,
                     "compiling" if pays else "eager")
        if not pays:
            return
    compiled = compile_forward(model, training=True, dynamic=False)
    if compiled is None:
        return
    try:
        seconds = probe_step(t)
    except Exception as err:  # noqa: BLE001 -- e.g. the backward's inductor compile; the run goes on eager
        compiled.fall_back(err)
        return
    if compiled.compiled is not None and t.d.main:
        log.info("torch.compile: the training step compiled in %.0f s", seconds)


def eager_step_seconds(t: Trainer) -> float:
    """The eager training step's forward and backward, in seconds, for compile auto. On CUDA timed: the best of 3
    probe steps after one warm-up (cuDNN's algorithm search, the allocator). On a CPU estimated from its FLOPs
    (counted on a probe step) at the rate the default step reaches on the 2-core CPU, not timed: other
    processes' load stretches a CPU step's wall time, and its CPU time too (threads spin at barriers), which
    turned a timed estimate towards compiling exactly when the machine was busiest."""
    if t.device.type == "cuda":
        probe_step(t)
        return min(probe_step(t) for _ in range(3))
    with FlopCounterMode(display=False) as counter:
        probe_step(t)
    return counter.get_total_flops() / CPU_STEP_FLOPS[t.precision]


def probe_step(t: Trainer) -> float:
    """Seconds of one forward and backward of a random batch of the training shape, leaving no trace: the
    gradients cleared, the BatchNorm statistics and the RNG state as they were."""
    cfg = t.cfg
    buffers, rng = [b.clone() for b in t.trainee.buffers()], torch.random.get_rng_state()
    generator = torch.Generator(device=t.device).manual_seed(0)
    feats = torch.randn(cfg.batch_size, cfg.num_frames, cfg.n_mels, generator=generator, device=t.device)
    labels = torch.zeros(cfg.batch_size, dtype=torch.long, device=t.device)
    started = time.perf_counter()
    try:
        with autocast(t.device, t.precision):
            loss, _ = t.trainee(feats, labels, t.margin(float(t.start_epoch)))  # (B, T, F) -> loss
        loss.backward()
        if t.device.type == "cuda":
            torch.cuda.synchronize(t.device)
        return time.perf_counter() - started
    finally:
        t.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for buffer, saved in zip(t.trainee.buffers(), buffers):
                buffer.copy_(saved)
        torch.random.set_rng_state(rng)


def init_from_checkpoint(trainee: Trainee, cfg: Config, classes: Sequence[str], d: Dist) -> None:
    """--init-from: the checkpoint's encoder (its model keys must be cfg's), and its head when it was trained on
    these classes with a head of this shape; a fresh head otherwise. Not its optimizer, epoch or log."""
    path = find_checkpoint(cfg.init_from, cfg.exp_dir)
    state = load_checkpoint(path)
    check_model_keys({k: getattr(cfg, k) for k in MODEL_KEYS}, build_config({}, base=state["config"]), path)
    trainee.model.load_state_dict(state["model"])
    shapes = {k: tuple(v.shape) for k, v in trainee.head.state_dict().items()}
    same = list(state["speakers"]) == list(classes) and {k: tuple(v.shape) for k, v in
                                                           state.get("head", {}).items()} == shapes
    if same:
        trainee.head.load_state_dict(state["head"])
    if d.main and same:
        log.info("initialised from %s: its encoder and its head (the same %d classes)", path, len(classes))
    elif d.main:
        log.info("initialised from %s: its encoder, and a fresh %s head for %d classes (the checkpoint's head is "
                 "for %d other classes)", path, cfg.loss, len(classes), len(state["speakers"]))


def restore(t: Trainer, state: dict) -> None:
    t.trainee.model.load_state_dict(state["model"])
    t.trainee.head.load_state_dict(state["head"])
    t.optimizer.load_state_dict(state["optimizer"])
    if t.scaler is not None and "scaler" in state:
        t.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    t.start_epoch, t.rows, t.best_eer, t.best_epoch = state["epoch"], state["log"], state["best_eer"], \
        state["best_epoch"]
    mid = state["mid_epoch"]
    if mid:
        if (mid["world_size"], mid["accumulate"]) != (t.d.world_size, t.cfg.accumulate):
            raise UserError(f"a mid-epoch checkpoint resumes with the processes and --accumulate it was written "
                            f"with ({mid['world_size']} and {mid['accumulate']}, not {t.d.world_size} and "
                            f"{t.cfg.accumulate}); or delete it to resume from the last epoch's checkpoint")
        t.start_batch, t.start_totals = mid["batches"], mid["totals"][t.d.rank]
    restore_record(t, state)


def checkpoint_state(t: Trainer, epoch: int, classes: Sequence[str], mid_epoch: dict | None = None) -> dict:
    """What resumes the run: after `epoch` epochs, plus `mid_epoch` (mid_epoch_state) within the next one."""
    state = {"model": t.trainee.model.state_dict(), "head": t.trainee.head.state_dict(),
             "optimizer": t.optimizer.state_dict(), "epoch": epoch, "config": to_dict(t.cfg),
             "speakers": list(classes), "log": t.rows, "best_eer": t.best_eer, "best_epoch": t.best_epoch,
             "rng": rng_state(), "mid_epoch": mid_epoch,
             "loss_record": None if t.record is None else torch.from_numpy(t.record.losses.copy())}
    if t.scaler is not None:
        state["scaler"] = t.scaler.state_dict()
    return state


# --- one epoch -------------------------------------------------------------------------------------------

@dataclass
class EpochStats:
    loss: float
    accuracy: float
    steps: int
    margin: float  # at the epoch's last step
    lr: float  # at the epoch's last step (under a warm-up the first step's is 0)


def train_epoch(t: Trainer, epoch: int, run: Path, classes: Sequence[str]) -> EpochStats:
    """One epoch (from t.start_batch, when resumed within it): a forward and backward per batch, an optimizer
    step per `accumulate` batches (an incomplete last group is dropped), a mid-epoch checkpoint every
    `checkpoint_every` steps."""
    t.ddp.train()
    t.frontend.train()
    batches = len(t.loader.batch_sampler)  # this rank's, in the whole epoch
    usable = batches - batches % t.cfg.accumulate
    start, t.start_batch = t.start_batch, 0
    totals = torch.tensor(t.start_totals or [0.0, 0.0, 0.0], device=t.device)  # loss sum, correct, utterances
    t.start_totals = None
    margin = t.margin(epoch + start / batches)
    # a bar on a terminal only (disable=None): a log file gets the per-epoch line, not a bar per step
    bar = tqdm(itertools.islice(t.loader, usable - start), desc=f"epoch {epoch + 1}/{t.cfg.epochs}", total=usable,
               initial=start, disable=None if t.d.main else True, dynamic_ncols=True, leave=False)
    for i, ((wave, labels), items) in enumerate(zip(bar, batch_items(t)), start=start):
        margin = t.margin(epoch + i / batches)
        loss, logits, labels = forward_backward(t, wave, labels, epoch, i, margin, items)
        with torch.no_grad():
            totals += torch.stack([loss.detach().float() * len(labels), (logits.argmax(-1) == labels).sum().float(),
                                   torch.tensor(float(len(labels)), device=t.device)])
        if (i + 1) % t.cfg.accumulate:
            continue
        optimizer_step(t, epoch, (i + 1 - t.cfg.accumulate) / batches)
        step = (i + 1) // t.cfg.accumulate
        if t.cfg.checkpoint_every and step % t.cfg.checkpoint_every == 0 and i + 1 < usable:
            save_mid_epoch(t, run, classes, epoch, step, totals)
        if t.d.main and step % 10 == 0:
            bar.set_postfix(loss=f"{totals[0].item() / totals[2].item():.3f}",
                            acc=f"{totals[1].item() / totals[2].item():.3f}")
    totals = all_mean(totals, t.d)
    seen = max(totals[2].item(), 1)
    steps = int(round(totals[2].item())) // (t.cfg.batch_size * t.cfg.accumulate)
    lr = learning_rate(t.cfg, epoch, max(usable - t.cfg.accumulate, 0) / batches)  # optimizer_step's last
    return EpochStats(totals[0].item() / seen, totals[1].item() / seen, steps, margin, lr)


def forward_backward(t: Trainer, wave: torch.Tensor, labels: torch.Tensor, epoch: int, i: int, margin: float,
                     items: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward and backward of batch i, waves (B, N) and labels (B,); returns (loss, logits, labels). The
    gradients add up over `accumulate` batches; DDP averages them over the ranks at the group's last one.
    With `items` (the batch's training-list indices; in-training filtering) each sample's loss is recorded."""
    wave = wave.to(t.device, non_blocking=True)  # (B, N)
    labels = labels.to(t.device, non_blocking=True)  # (B,)
    generator = torch.Generator(device=t.device).manual_seed(step_seed(t.cfg.seed, epoch, i, t.d.rank))
    feats = t.frontend(wave, generator=generator)  # (B, T, F)
    last = (i + 1) % t.cfg.accumulate == 0
    with t.ddp.no_sync() if t.d.distributed and not last else contextlib.nullcontext():
        with autocast(t.device, t.precision):
            loss, logits = t.ddp(feats, labels, margin, "mean" if items is None else "none")
        if items is not None:
            loss = record_losses(t, items, loss)  # (B,) kept for the record; their (weighted) mean
        scaled = loss / t.cfg.accumulate if t.cfg.accumulate > 1 else loss  # the mean over the group's batches
        (t.scaler.scale(scaled) if t.scaler is not None else scaled).backward()
    return loss, logits, labels


def optimizer_step(t: Trainer, epoch: int, progress: float) -> None:
    """One step on the summed gradients, at the lr of `progress` in [0, 1) into the epoch; then clear them."""
    for group in t.optimizer.param_groups:
        group["lr"] = learning_rate(t.cfg, epoch, progress)
    if t.scaler is not None:
        t.scaler.unscale_(t.optimizer)
    if t.cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(t.trainee.parameters(), t.cfg.grad_clip)
    if t.scaler is not None:
        t.scaler.step(t.optimizer)
        t.scaler.update()
    else:
        t.optimizer.step()
    t.optimizer.zero_grad(set_to_none=True)


def save_mid_epoch(t: Trainer, run: Path, classes: Sequence[str], epoch: int, step: int,
                   totals: torch.Tensor) -> None:
    """A checkpoint `step` optimizer steps into `epoch` (0-based) that resumes exactly: with every rank's
    running totals, so the epoch's loss and accuracy come out as without the interruption."""
    every = [totals.clone() for _ in range(t.d.world_size)]
    if t.d.distributed:
        dist.all_gather(every, totals)
    mid = {"step": step, "batches": step * t.cfg.accumulate, "world_size": t.d.world_size,
           "accumulate": t.cfg.accumulate, "totals": [x.tolist() for x in every], **gather_loss_sums(t)}
    if t.d.main:
        path = save_checkpoint(run, checkpoint_state(t, epoch, classes, mid), t.cfg.keep_checkpoints, False)
        log.info("epoch %d, step %d: checkpoint %s", epoch + 1, step, path.name)


# --- in-training filtering of noisy labels (the selection: data/samplers.leave_out) ------------------------

def filter_epoch(t: Trainer, epoch: int, data: TrainingData) -> dict[str, str]:
    """At the start of `epoch` (0-based; the first filter_warmup epochs train on everything): each speaker's
    highest-loss share in the record (leave_out) left out of the sampler (drop) or given the loss weight
    filter_weight (downweight), the same on every rank (so is the record). Returns the log row's fields: the
    count left out and, when label noise moved utterances, its precision and recall against them."""
    if t.record is None:
        return {}
    labels = t.loader.dataset.labels  # speaker indices (not the speed classes)
    left = (leave_out(t.record.losses, labels, t.cfg.filter_share) if epoch >= t.cfg.filter_warmup
            else np.zeros(len(labels), dtype=bool))
    if t.cfg.filter_mode == "drop":
        t.loader.batch_sampler.set_left_out(left)
    else:
        t.weights = torch.tensor(np.where(left, t.cfg.filter_weight, 1.0), dtype=torch.float32, device=t.device)
    fields = {"left_out": str(int(left.sum()))}
    if data.moved:
        noisy = np.array([u.key in data.moved for u in data.utterances])
        found = int((left & noisy).sum())
        fields["left_out_precision"] = f"{found / left.sum():.4f}" if left.any() else ""
        fields["left_out_recall"] = f"{found / noisy.sum():.4f}" if noisy.any() else ""
    return fields


def filter_note(row: dict, mode: str) -> str:
    """The epoch log line's part on filtering: '  left out N (precision P, recall R of the moved labels)'."""
    if "left_out" not in row:
        return ""
    verb = "left out" if mode == "drop" else "down-weighted"
    scored = (f" (precision {row['left_out_precision'] or '-'}, recall {row['left_out_recall'] or '-'} of the "
              f"moved labels)" if "left_out_recall" in row else "")
    return f"  {verb} {row['left_out']}{scored}"


def batch_items(t: Trainer) -> Iterator[list[int] | None]:
    """The training-list indices of each batch the loader yields (the sampler iterated again: a pure function
    of its epoch), for the loss record; None for every batch when not filtering."""
    if t.record is None:
        return itertools.repeat(None)
    return ([i for i, _ in batch] for batch in t.loader.batch_sampler)


def record_losses(t: Trainer, items: list[int], losses: torch.Tensor) -> torch.Tensor:
    """Keep a batch's per-sample losses (B,) for the record (on the device until flush_losses: no
    synchronisation per step); return the step's objective, their mean, with the left-out utterances weighted
    by filter_weight in downweight mode."""
    t.pending.append((np.asarray(items, dtype=np.int64), losses.detach().float()))
    if t.weights is None:
        return losses.mean()
    return (losses * t.weights[torch.as_tensor(items, device=t.device)]).mean()


def flush_losses(t: Trainer) -> None:
    """The pending losses into this rank's sums of the epoch, in training order (one copy from the device)."""
    if t.pending:
        items = np.concatenate([i for i, _ in t.pending])
        t.record.add(items, torch.cat([x for _, x in t.pending]).double().cpu().numpy())
        t.pending.clear()


def close_loss_record(t: Trainer) -> None:
    """The epoch's end: the ranks' sums and counts added up (all_reduce; the ranks trained disjoint shards), so
    every rank holds the same record and leaves out the same utterances in the next epoch."""
    flush_losses(t)
    sums = torch.tensor(t.record.sums, device=t.device)  # copies: nccl reduces CUDA tensors only
    counts = torch.tensor(t.record.counts, device=t.device)
    if t.d.distributed:
        dist.all_reduce(sums)
        dist.all_reduce(counts)
    t.record.close_epoch(sums.cpu().numpy(), counts.cpu().numpy())


def gather_loss_sums(t: Trainer) -> dict[str, list[torch.Tensor]]:
    """A mid-epoch checkpoint's part of the record: every rank's loss sums and counts of the epoch so far (the
    record's losses are the checkpoint's `loss_record`); each rank resumes its own."""
    if t.record is None:
        return {}
    flush_losses(t)
    parts = {}
    for key, mine in (("loss_sums", t.record.sums), ("loss_counts", t.record.counts)):
        mine = torch.tensor(mine, device=t.device)
        every = [torch.empty_like(mine) for _ in range(t.d.world_size)]
        if t.d.distributed:
            dist.all_gather(every, mine)
        else:
            every = [mine]
        parts[key] = [x.cpu() for x in every]
    return parts


def restore_record(t: Trainer, state: dict) -> None:
    """A resumed run's loss record: the checkpoint's (empty when it has none: a schema-4 checkpoint, or a run
    that did not filter), and this rank's sums of the epoch so far when resumed within it."""
    saved, mid = state.get("loss_record"), state.get("mid_epoch")
    if t.record is None or saved is None:
        return
    if len(saved) != len(t.record.losses):
        raise UserError(f"the checkpoint's loss record covers {len(saved)} training utterances, not this run's "
                        f"{len(t.record.losses)}")
    t.record.losses = saved.double().numpy().copy()
    if mid and "loss_sums" in mid:
        t.record.sums = mid["loss_sums"][t.d.rank].double().numpy().copy()
        t.record.counts = mid["loss_counts"][t.d.rank].long().numpy().copy()


def validate(t: Trainer, val_lists: Sequence[TrialList]) -> tuple[float, float]:
    """(EER, minDCF at the first p_target) of the live model on the validation list: evaluation.evaluate under
    the run's extraction policy, cosine scores, no cache. Every rank embeds its share of the files (with rank 0's
    BatchNorm statistics, the ones its checkpoint holds) and gets the result."""
    broadcast_buffers(t.trainee, t.d)
    embedder = Embedder(t.trainee.model, t.frontend, t.device, t.precision, extraction_from_config(t.cfg))
    [row] = evaluate(embedder, val_lists, Scorer(), EvalPlan(enroll_mode=t.cfg.enroll_mode))
    return row.result.eer, row.result.min_dcf[P_TARGETS[0]]


def run_epoch(t: Trainer, epoch: int, run: Path, data: TrainingData) -> None:
    """Train one epoch, validate (every rank embeds its share), save the checkpoint and the log (rank 0)."""
    started = time.perf_counter()
    filtered = filter_epoch(t, epoch, data)  # the log's left_out fields; {} when not filtering
    t.loader.batch_sampler.set_epoch(epoch, t.start_batch)
    if t.d.distributed:
        count = check_disjoint_shards(t.loader.batch_sampler, t.d, t.device)
        if t.d.main:
            log.info("epoch %d: %d ranks drew disjoint shards of %d utterances each", epoch + 1, t.d.world_size,
                     count)
    stats = train_epoch(t, epoch, run, data.classes)
    if t.record is not None:
        close_loss_record(t)
    if not all(torch.isfinite(p).all() for p in t.trainee.parameters()):
        raise UserError(f"epoch {epoch + 1}: the weights became NaN or infinite (loss {stats.loss:.4g}): the "
                        f"training diverged; --resume from the last checkpoint with a lower --lr or a --grad-clip")
    row = {"epoch": epoch + 1, "steps": stats.steps, "lr": f"{stats.lr:.6g}",
           "margin": f"{stats.margin:.4f}", "loss": f"{stats.loss:.4f}", "accuracy": f"{stats.accuracy:.4f}",
           "val_eer": "", "val_min_dcf": "", **filtered}
    if data.val_lists:
        eer, min_dcf = validate(t, data.val_lists)
        row["val_eer"], row["val_min_dcf"] = f"{eer:.4f}", f"{min_dcf:.4f}"
    row["seconds"] = f"{time.perf_counter() - started:.1f}"
    t.rows.append(row)
    if t.d.main:
        val_eer = float(row["val_eer"]) if row["val_eer"] else math.inf
        is_best = val_eer < t.best_eer or (not data.val_lists and epoch + 1 == t.cfg.epochs)
        if is_best:
            t.best_eer, t.best_epoch = min(t.best_eer, val_eer), epoch + 1
        save_checkpoint(run, checkpoint_state(t, epoch + 1, data.classes), t.cfg.keep_checkpoints, is_best)
        write_log(run, t.rows)
        write_curves(run, t.rows, t.cfg.tensorboard)  # <run>/curves.png (+ TensorBoard scalars)
        eer = f"  val EER {100 * val_eer:.2f}%" if row["val_eer"] else ""
        log.info("epoch %d/%d  loss %s  acc %s  lr %s%s%s  (%ss)", epoch + 1, t.cfg.epochs, row["loss"],
                 row["accuracy"], row["lr"], eer, filter_note(row, t.cfg.filter_mode), row["seconds"])
    if t.d.distributed:
        dist.barrier()


# --- the run ---------------------------------------------------------------------------------------------

def train(cfg: Config, *, utterances: Sequence[Utterance] | None = None, run: Path | None = None,
          kept: str = "all", moved: Collection[str] = ()) -> Path:
    """Train (or resume, with cfg.resume) and return the run folder. `utterances` replaces the corpus scan
    (train_sort passes its kept list, described by `kept` in the research log; `moved`, the keys of its
    utterances whose label is wrong, known when the source injected label noise, scores in-training filtering);
    `run` fixes the folder."""
    configure_malloc()
    d = init_distributed(cfg.device, cfg.dist_timeout_min)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run, resume_state = open_run(cfg, run, d)
    data = training_data(cfg, run, utterances, d, moved)
    t = build_trainer(cfg, data, d, resume_state)
    if resume_state and d.main:
        log.info("resuming %s after epoch %d%s", run, t.start_epoch,
                 f", batch {t.start_batch} of epoch {t.start_epoch + 1}" if t.start_batch else "")
    if d.main:
        log.info("%s: %s (%.2f M parameters), %s head, %d speakers, %d utterances, %d steps/epoch x %d "
                 "process(es) x batch %d x accumulate %d; device %s, precision %s", run, cfg.model,
                 sum(p.numel() for p in t.trainee.model.parameters()) / 1e6, cfg.loss, len(data.speakers),
                 len(data.utterances), len(t.loader.batch_sampler) // cfg.accumulate, d.world_size,
                 cfg.batch_size, cfg.accumulate, t.device, t.precision)
        warn_effective_batch(cfg, d)
    for epoch in range(t.start_epoch, cfg.epochs):
        run_epoch(t, epoch, run, data)
    if d.distributed:  # before anything loads best.pt: the replicas compared are the trained ones
        check_replicas_in_sync(t.trainee, d)
    final = final_checkpoint(run, cfg, d)
    record_results(run, cfg, len(data.utterances), kept, d, final)  # every rank embeds its share of the test files
    finish_distributed(d)
    return run


RECIPE_BATCH = 64  # the effective batch the default lr (the recipe's) was tuned for


def warn_effective_batch(cfg: Config, d: Dist) -> None:
    """The linear scaling rule (Goyal et al. 2017, "Accurate, Large Minibatch SGD"): lr proportional to the
    effective batch. Stated, not applied: the rule is a starting point (Adam often needs less than linear), and
    the lr a run uses stays the one its config says."""
    effective = cfg.batch_size * cfg.accumulate * d.world_size
    if effective != RECIPE_BATCH:
        log.warning("effective batch %d (batch %d x accumulate %d x %d process(es)) is not the %d the recipe's "
                    "lr %g was tuned for; the linear scaling rule would give --lr %.3g; using --lr %g as given",
                    effective, cfg.batch_size, cfg.accumulate, d.world_size, RECIPE_BATCH, Config.lr,
                    Config.lr * effective / RECIPE_BATCH, cfg.lr)


RESULT_COLUMNS = ["run", "model", "optimizer", "lr (decay/epoch)", "batch", "utts/spk", "label noise", "kept",
                  "loss (s, m)", "epochs", "EER %", "minDCF0.01"]


def final_checkpoint(run: Path, cfg: Config, d: Dist) -> Path:
    """The checkpoint the run's final test is given: best.pt, or with average_last N the average of the last N
    epoch checkpoints, checkpoints/avg_last_N.pt (runs.average_checkpoints, written by rank 0)."""
    if not cfg.average_last:
        return run / "checkpoints" / "best.pt"
    if d.main:
        path = average_checkpoints(run, cfg.average_last)
        log.info("%s: the weight average of the last %d epoch checkpoints", path, cfg.average_last)
    if d.distributed:
        dist.barrier()  # written before any rank loads it
    return run / "checkpoints" / f"avg_last_{cfg.average_last}.pt"


def record_results(run: Path, cfg: Config, num_utts: int, kept: str, d: Dist, checkpoint: Path) -> None:
    """The final test of `checkpoint` (evaluation.evaluate_checkpoint, as `inference.py --checkpoint FILE` runs
    it; every rank embeds its share of the files): run/results.json, and this run's row appended to
    <exp_dir>/results.md, the research log of every run (rank 0)."""
    trained = load_trained(checkpoint)  # once: its model for the test, its epoch for results.json
    embedder = checkpoint_embedder(cfg, trained.model, checkpoint)
    rows = evaluate_checkpoint(cfg, checkpoint, embedder).rows if cfg.test_trials else []
    if not d.main:
        return
    for r in rows:
        log.info("test %s %s: EER %.2f%%  minDCF(%g) %.4f", r.trial_list.name, r.result.score_norm,
                 100 * r.result.eer, P_TARGETS[0], r.result.min_dcf[P_TARGETS[0]])
    atomic_write_text(run / "results.json", json.dumps({"checkpoint": f"checkpoints/{checkpoint.name}",
                                                        "epoch": trained.epoch,
                                                        "results": [row_record(r) for r in rows]}, indent=2))
    if rows:
        first = rows[0].result
        append_table_row(Path(cfg.exp_dir) / "results.md", RESULT_COLUMNS, {
            "run": run.relative_to(cfg.exp_dir).as_posix() if run.is_relative_to(cfg.exp_dir) else str(run),
            "model": cfg.model + (f" C={cfg.channels}" if cfg.channels else ""), "optimizer": cfg.optimizer,
            "lr (decay/epoch)": f"{cfg.lr:g} ({cfg.lr_decay:g})", "batch": cfg.batch_size,
            "utts/spk": cfg.utts_per_speaker or "all", "label noise": f"{cfg.label_noise:g}", "kept": kept,
            "loss (s, m)": f"{cfg.loss} ({cfg.scale:g}, {cfg.margin:g})", "epochs": cfg.epochs,
            "EER %": f"{100 * first.eer:.2f}", "minDCF0.01": f"{first.min_dcf[P_TARGETS[0]]:.4f}"})


def main(argv: list[str] | None = None) -> Path:
    overrides, _ = parse_args(argv, __doc__, make_parser(__doc__, "train.py"))
    cfg = build_config(overrides)
    if not cfg.resume:
        return train(with_init_model(cfg, overrides) if cfg.init_from else cfg)
    # the saved config of the run, with this command line's flags on top (e.g. more epochs); never another
    # model or other features
    run = find_resumable(cfg.exp_dir, cfg.name)
    saved = load_checkpoint(latest_checkpoint(run))["config"]
    check_model_keys(overrides, build_config({}, base=saved), run)
    return train(build_config({**overrides, "resume": True, "name": run.name}, base=saved), run=run)


def with_init_model(cfg: Config, overrides: dict[str, object]) -> Config:
    """--init-from: the model keys come from that checkpoint (another value given is an error), the rest from
    the command line; init_from resolved to the checkpoint file."""
    path = find_checkpoint(cfg.init_from, cfg.exp_dir)
    saved = build_config({}, base=load_checkpoint(path)["config"])
    check_model_keys(overrides, saved, path)
    return build_config({**{k: getattr(saved, k) for k in MODEL_KEYS}, **overrides, "init_from": str(path)})


if __name__ == "__main__":
    run_main(main)
