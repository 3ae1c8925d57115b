"""Train a speaker-embedding network with a margin softmax head.

    python train.py                                   # ECAPA-TDNN on the demo corpus (generated on first use)
    python train.py --model resnet18 --loss am --scale 30 --margin 0.2 --optimizer sgd --lr 0.1
    python train.py --resume                          # continue the newest run from its latest checkpoint
    torchrun --nproc_per_node=4 train.py ...          # data parallel (nccl on GPUs, gloo on CPU)

Writes exp/<name>/: config.yaml (resolved), train_list.jsonl, log.csv (one row per epoch),
checkpoints/epoch_NNNN.pt (one per epoch, the last `keep_checkpoints` kept) and checkpoints/best.pt (lowest
validation EER). Per step: fbank and SpecAugment on the batch (on the device), model, head, backward, step.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from config import Config, build_config, parse_args, save_config, to_dict
from data.augment import build_augmenter
from data.dataset import (
    BalancedSampler,
    EpochSampler,
    TrainDataset,
    Utterance,
    cap_per_speaker,
    inject_label_noise,
    load_index,
    save_index,
    speakers_of,
    speed_speakers,
    write_moved_labels,
)
from data.features import num_samples_for_frames
from inference import build_frontend, build_network, evaluate_trials, fbank_options
from loss import MarginSchedule
from utils import (
    UserError,
    append_table_row,
    atomic_torch_save,
    atomic_write_text,
    autocast,
    configure_malloc,
    load_checkpoint,
    resolve_device,
    resolve_precision,
    rng_state,
    run_main,
    seed_everything,
    set_rng_state,
)

log = logging.getLogger("voiceprint")


# --- distributed ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    distributed: bool = False  # launched by torchrun: a process group exists (even of one process)

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; without them this is a single process, with no process group."""
    if "WORLD_SIZE" not in os.environ:
        return Dist()
    world_size = int(os.environ["WORLD_SIZE"])
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"local rank {local_rank} has no GPU: {torch.cuda.device_count()} visible; start at "
                            f"most that many processes per node (torchrun --nproc_per_node)")
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world_size, local_rank, distributed=True)


def check_disjoint_shards(sampler: torch.utils.data.Sampler, num_items: int, d: Dist, device: torch.device) -> int:
    """Under DDP, verify that this epoch's shards of the ranks do not overlap; returns this rank's count."""
    seen = torch.zeros(num_items, dtype=torch.int32)
    for batch in sampler:
        seen[[i for i, _ in batch]] += 1
    count = int(seen.sum())
    if d.distributed:
        seen = seen.to(device)  # nccl reduces CUDA tensors only, gloo CPU ones
        dist.all_reduce(seen)
        if int(seen.max()) > 1:
            raise RuntimeError("DDP ranks drew overlapping training shards")
    return count


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


def all_mean(values: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.distributed:
        dist.all_reduce(values)
        values = values / d.world_size
    return values


# --- model -----------------------------------------------------------------------------------------------

class Trainee(nn.Module):
    """Model and head as one module, so that DDP sees (and synchronises) every trained weight."""

    def __init__(self, model: nn.Module, head: nn.Module):
        super().__init__()
        self.model, self.head = model, head

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.model(feats), labels)  # (loss, logits (B, num_speakers))


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


def step_seed(seed: int, step: int) -> int:
    """The seed of a step's on-device randomness (dither, SpecAugment)."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1, np.uint64)[0] >> 1)


# --- data ------------------------------------------------------------------------------------------------

def ensure_demo_corpus(cfg: Config) -> None:
    """Generate (or refresh) the demo corpus on first use, when training data points inside it."""
    root = Path(cfg.demo_corpus)
    if Path(cfg.train_data).resolve().is_relative_to(root.resolve()):
        from data.synth import ensure_demo_corpus as ensure

        ensure(root)


def check_inputs(cfg: Config) -> None:
    """Fail before training, not after it, when an evaluation input is missing."""
    folders = [cfg.train_data, cfg.val_data if cfg.val_trials else "", cfg.test_data if cfg.test_trials else ""]
    for folder in filter(None, folders):
        if not Path(folder).is_dir():
            raise UserError(f"{folder}: no such corpus folder")
    for trials in [cfg.val_trials, *cfg.test_trials]:
        if trials and not Path(trials).is_file():
            raise UserError(f"{trials}: no such trial list")


def training_utterances(cfg: Config, exp: Path | None) -> list[Utterance]:
    """The corpus after the per-speaker cap and the injected label noise (recorded in the experiment)."""
    utts = cap_per_speaker(load_index(cfg.train_data, cfg.sample_rate), cfg.utts_per_speaker, cfg.seed)
    utts, moved = inject_label_noise(utts, cfg.label_noise, cfg.seed)
    if exp is not None and cfg.label_noise > 0:
        write_moved_labels(moved, exp / "label_noise.txt")
    return utts


def make_loader(cfg: Config, utts: Sequence[Utterance], speakers: Sequence[str], d: Dist,
                pin_memory: bool) -> torch.utils.data.DataLoader:
    num_samples = num_samples_for_frames(cfg.num_frames, fbank_options(cfg))
    augment = build_augmenter(cfg.musan, cfg.rirs, cfg.sample_rate, cfg.aug_prob, cfg.noise_snr, cfg.music_snr,
                              cfg.babble_snr, cfg.babble_speakers)
    dataset = TrainDataset(utts, speakers, num_samples, cfg.sample_rate, augment=augment,
                           speed_perturb=cfg.speed_perturb)
    if cfg.sampler == "balanced":
        sampler = BalancedSampler(dataset.labels, cfg.batch_size, cfg.utts_per_speaker_in_batch, cfg.seed,
                                  d.rank, d.world_size)
    else:
        sampler = EpochSampler(len(dataset), cfg.batch_size, cfg.seed, d.rank, d.world_size)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.num_workers,
                                       pin_memory=pin_memory, persistent_workers=cfg.num_workers > 0)


# --- experiment folder and checkpoints -------------------------------------------------------------------

def experiment_dir(cfg: Config) -> Path:
    name = cfg.name or f"{cfg.model}-{datetime.now():%Y%m%d-%H%M%S}"
    return Path(cfg.exp_dir) / name


def latest_checkpoint(exp: Path) -> Path | None:
    epochs = sorted((exp / "checkpoints").glob("epoch_*.pt"))
    return epochs[-1] if epochs else None


def find_resumable(cfg: Config) -> Path:
    if cfg.name:
        exp = Path(cfg.exp_dir) / cfg.name
        if latest_checkpoint(exp) is None:
            raise UserError(f"{exp}: no checkpoint to resume from")
        return exp
    runs = [p.parent.parent for p in Path(cfg.exp_dir).glob("*/checkpoints/epoch_*.pt")]
    if not runs:
        raise UserError(f"--resume: no run with a checkpoint under {cfg.exp_dir}/")
    return max(set(runs), key=lambda p: latest_checkpoint(p).stat().st_mtime)


def save_checkpoint(exp: Path, state: dict, keep: int, is_best: bool) -> None:
    folder = exp / "checkpoints"
    path = folder / f"epoch_{state['epoch']:04d}.pt"
    atomic_torch_save(state, path)
    if is_best:
        with_tmp = folder / ".best.pt.tmp"
        shutil.copyfile(path, with_tmp)
        os.replace(with_tmp, folder / "best.pt")
    if keep > 0:
        for old in sorted(folder.glob("epoch_*.pt"))[:-keep]:
            old.unlink()


LOG_FIELDS = ["epoch", "steps", "lr", "margin", "loss", "accuracy", "val_eer", "val_min_dcf", "seconds"]


def write_log(exp: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LOG_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(exp / "log.csv", buffer.getvalue())


# --- training --------------------------------------------------------------------------------------------

@dataclass
class EpochStats:
    loss: float
    accuracy: float
    steps: int


def train_epoch(trainee: nn.Module, frontend: nn.Module, loader: torch.utils.data.DataLoader,
                optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, cfg: Config, epoch: int,
                first_step: int, margin: MarginSchedule, head: nn.Module, device: torch.device,
                precision: str, d: Dist) -> EpochStats:
    trainee.train()
    frontend.train()
    steps_per_epoch = len(loader.batch_sampler)
    generator = torch.Generator(device=device)
    totals = torch.zeros(3, device=device)  # loss sum, correct, utterances
    # a bar on a terminal only (disable=None): a log file gets the per-epoch line, not a bar per step
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=None if d.main else True,
               dynamic_ncols=True, leave=False)
    for i, (wave, labels) in enumerate(bar):
        position = (first_step + i) / steps_per_epoch
        lr = learning_rate(cfg, epoch, position)
        for group in optimizer.param_groups:
            group["lr"] = lr
        head.margin = margin(epoch + position)
        wave = wave.to(device, non_blocking=True)  # (B, N)
        labels = labels.to(device, non_blocking=True)  # (B,)
        generator.manual_seed(step_seed(cfg.seed, epoch * steps_per_epoch + first_step + i))
        feats = frontend(wave, generator=generator)  # (B, T, F)
        with autocast(device, precision):
            loss, logits = trainee(feats, labels)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(trainee.parameters(), cfg.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        with torch.no_grad():
            totals += torch.stack([loss.detach().float() * len(labels),
                                   (logits.argmax(-1) == labels).sum().float(),
                                   torch.tensor(float(len(labels)), device=device)])
        if d.main and i % 10 == 0:
            bar.set_postfix(loss=f"{totals[0].item() / totals[2].item():.3f}",
                            acc=f"{totals[1].item() / totals[2].item():.3f}", lr=f"{lr:.2e}")
    totals = all_mean(totals, d)
    return EpochStats(totals[0].item() / max(totals[2].item(), 1), totals[1].item() / max(totals[2].item(), 1),
                      int(round(totals[2].item())) // cfg.batch_size)


def train(cfg: Config, *, utterances: Sequence[Utterance] | None = None, exp: Path | None = None,
          kept: str = "all") -> Path:
    """Train (or resume, with cfg.resume) and return the experiment folder. `utterances` replaces the
    corpus scan (train_sort passes its kept list, described by `kept` in the results log); `exp` fixes the
    folder."""
    configure_malloc()
    d = init_distributed(cfg.device)
    device = resolve_device(cfg.device)
    if device.type == "cuda" and d.distributed:
        device = torch.device("cuda", d.local_rank)
    precision = resolve_precision(cfg.precision, device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    resume_state = None
    if cfg.resume:
        exp = exp or find_resumable(cfg)
        resume_state = load_checkpoint(latest_checkpoint(exp))
    exp = exp or experiment_dir(cfg)
    if d.main:
        ensure_demo_corpus(cfg)
        check_inputs(cfg)
        exp.mkdir(parents=True, exist_ok=True)
        save_config(cfg, exp / "config.yaml")
        if utterances is None:
            load_index(cfg.train_data, cfg.sample_rate)  # scan once, cache for the other ranks
    if d.distributed:
        dist.barrier()  # the corpus exists before other ranks scan it

    if utterances is None:  # rank 0 built (and cached) the index before the barrier; the others read it
        utterances = training_utterances(cfg, exp if d.main else None)
    speakers = speakers_of(utterances)
    classes = speed_speakers(speakers) if cfg.speed_perturb else speakers  # the head's classes
    if d.main:
        save_index(utterances, exp / "train_list.jsonl")

    seed_everything(cfg.seed)  # identical initial weights on every rank
    model, head = build_network(cfg, len(classes))
    trainee = Trainee(model, head).to(device)
    frontend = build_frontend(cfg).to(device)
    optimizer = build_optimizer(cfg, list(trainee.parameters()))
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    margin = MarginSchedule(cfg.margin, *cfg.margin_ramp) if cfg.margin_ramp[1] > 0 else (lambda _: cfg.margin)
    loader = make_loader(cfg, utterances, speakers, d, pin_memory=device.type == "cuda")

    start_epoch, rows, best_eer = 0, [], math.inf
    if resume_state:
        trainee.model.load_state_dict(resume_state["model"])
        trainee.head.load_state_dict(resume_state["head"])
        optimizer.load_state_dict(resume_state["optimizer"])
        if scaler is not None and "scaler" in resume_state:
            scaler.load_state_dict(resume_state["scaler"])
        set_rng_state(resume_state["rng"])
        start_epoch, rows, best_eer = resume_state["epoch"], resume_state["log"], resume_state["best_eer"]
        log.info("resuming %s after epoch %d", exp, start_epoch)
    ddp = (nn.parallel.DistributedDataParallel(trainee, device_ids=[device.index] if device.type == "cuda" else None)
           if d.distributed else trainee)

    if d.main:
        log.info("%s: %s (%.2f M parameters), %s head, %d speakers, %d utterances, %d steps/epoch x %d "
                 "process(es) x batch %d; device %s, precision %s", exp, cfg.model,
                 sum(p.numel() for p in model.parameters()) / 1e6, cfg.loss, len(speakers), len(utterances),
                 len(loader.batch_sampler), d.world_size, cfg.batch_size, device, precision)
    for epoch in range(start_epoch, cfg.epochs):
        started = time.perf_counter()
        loader.batch_sampler.set_epoch(epoch)
        if d.distributed:
            count = check_disjoint_shards(loader.batch_sampler, len(loader.dataset), d, device)
            if d.main:
                log.info("epoch %d: %d ranks drew disjoint shards of %d utterances each", epoch + 1,
                         d.world_size, count)
        stats = train_epoch(ddp, frontend, loader, optimizer, scaler, cfg, epoch, 0, margin, head, device,
                            precision, d)
        row = {"epoch": epoch + 1, "steps": stats.steps, "lr": f"{learning_rate(cfg, epoch, 0):.6g}",
               "margin": f"{head.margin:.4f}", "loss": f"{stats.loss:.4f}", "accuracy": f"{stats.accuracy:.4f}",
               "val_eer": "", "val_min_dcf": ""}
        if d.main and cfg.val_trials:
            result = evaluate_trials(model, frontend, cfg.val_trials, cfg.val_data, sample_rate=cfg.sample_rate,
                                     device=device, precision=precision, max_frames=cfg.max_eval_frames)
            row["val_eer"], row["val_min_dcf"] = f"{result.eer:.4f}", f"{result.min_dcf[0.01]:.4f}"
        row["seconds"] = f"{time.perf_counter() - started:.1f}"
        rows.append(row)
        if d.main:
            val_eer = float(row["val_eer"]) if row["val_eer"] else math.inf
            is_best = val_eer < best_eer or (not cfg.val_trials and epoch + 1 == cfg.epochs)
            best_eer = min(best_eer, val_eer)
            state = {"model": model.state_dict(), "head": head.state_dict(), "optimizer": optimizer.state_dict(),
                     "epoch": epoch + 1, "config": to_dict(cfg), "speakers": list(classes), "log": rows,
                     "best_eer": best_eer, "rng": rng_state()}
            if scaler is not None:
                state["scaler"] = scaler.state_dict()
            save_checkpoint(exp, state, cfg.keep_checkpoints, is_best)
            write_log(exp, rows)
            eer = f"  val EER {100 * val_eer:.2f}%" if row["val_eer"] else ""
            log.info("epoch %d/%d  loss %s  acc %s  lr %s%s  (%ss)", epoch + 1, cfg.epochs, row["loss"],
                     row["accuracy"], row["lr"], eer, row["seconds"])
        if d.distributed:
            dist.barrier()
    if d.main:
        record_results(exp, cfg, model, frontend, device, precision, len(utterances), kept)
    if d.distributed:
        check_replicas_in_sync(trainee, d)
        dist.barrier()
        dist.destroy_process_group()
    return exp


RESULT_COLUMNS = ["run", "model", "optimizer", "lr (decay/epoch)", "batch", "utts/spk", "label noise", "kept",
                  "loss (s, m)", "epochs", "EER %", "minDCF0.01"]


def record_results(exp: Path, cfg: Config, model: nn.Module, frontend: nn.Module, device: torch.device,
                   precision: str, num_utts: int, kept: str) -> None:
    """Evaluate the best checkpoint on the test trial lists; write exp/results.json and append this run's
    row to <exp_dir>/results.md, the research log of every run."""
    best = load_checkpoint(exp / "checkpoints" / "best.pt")
    model.load_state_dict(best["model"])
    results = []
    for trials in cfg.test_trials:
        r = evaluate_trials(model, frontend, trials, cfg.test_data, sample_rate=cfg.sample_rate, device=device,
                            precision=precision, max_frames=cfg.max_eval_frames)
        results.append({"trials": trials, "num_trials": r.num_trials, "eer": r.eer,
                        "min_dcf": {str(p): v for p, v in r.min_dcf.items()}})
        log.info("test %s: EER %.2f%%  minDCF(0.01) %.4f", trials, 100 * r.eer, r.min_dcf[0.01])
    atomic_write_text(exp / "results.json", json.dumps({"checkpoint": "checkpoints/best.pt", "epoch": best["epoch"],
                                                        "results": results}, indent=2))
    if results:
        append_table_row(Path(cfg.exp_dir) / "results.md", RESULT_COLUMNS, {
            "run": exp.relative_to(cfg.exp_dir).as_posix() if exp.is_relative_to(cfg.exp_dir) else str(exp),
            "model": cfg.model + (f" C={cfg.channels}" if cfg.channels else ""), "optimizer": cfg.optimizer,
            "lr (decay/epoch)": f"{cfg.lr:g} ({cfg.lr_decay:g})", "batch": cfg.batch_size,
            "utts/spk": cfg.utts_per_speaker or "all", "label noise": f"{cfg.label_noise:g}", "kept": kept,
            "loss (s, m)": f"{cfg.loss} ({cfg.scale:g}, {cfg.margin:g})", "epochs": cfg.epochs,
            "EER %": f"{100 * results[0]['eer']:.2f}", "minDCF0.01": f"{results[0]['min_dcf']['0.01']:.4f}"})


def main(argv: list[str] | None = None) -> Path:
    overrides, _ = parse_args(argv, __doc__)
    cfg = build_config(overrides)
    if cfg.resume:  # the saved config of the run, with this command line's flags on top (e.g. more epochs)
        exp = find_resumable(cfg)
        saved = load_checkpoint(latest_checkpoint(exp))["config"]
        cfg = build_config({**overrides, "resume": True, "name": exp.name}, base=saved)
        return train(cfg, exp=exp)
    return train(cfg)


if __name__ == "__main__":
    run_main(main)
