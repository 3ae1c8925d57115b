"""Model benchmark: size, compute and CPU speed of the registered models, as a Markdown table.

    python -m bench.bench_models                                  # every model, fp32, 3 timed steps each
    python -m bench.bench_models --models ecapa_tdnn resnet34 --steps 10 --precision bf16

Run from the repository root (`-m`, like bench.bench_data). Per model:
- parameters: the model only, no classifier head;
- MACs for one 2 s crop (batch 1 x 200 frames x 80 mels), counted by torch.utils.flop_counter (FLOPs / 2);
- train step: batch --batch-size x 200 frames of random fbank, forward + AAM head (--speakers classes) +
  backward + Adam step; the median of --steps steps after one warm-up step;
- train GFLOP/s: the forward + backward FLOPs of that step (counted during the warm-up step; the optimizer's
  element-wise work is not counted) over the median step time;
- % of ref: that rate as a fraction of the reference rate, measured in the same run: a large fp32 1x1
  Conv1d forward (batch 64, 512 -> 1536 channels, 200 frames), about the best this machine's GEMM reaches;
- embed 10 s: one 1000-frame utterance, eval mode, no_grad, median of 3 after a warm-up.
torch uses os.cpu_count() threads. Other processes on the machine slow every number; the table says how
many CPUs there were, not whether they were shared.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from loss import build_head
from models import MODELS, build_model
from utils import configure_malloc

log = logging.getLogger("voiceprint")

N_MELS = 80
CROP_FRAMES = 200  # 2 s training crop
EMBED_FRAMES = 1000  # 10 s utterance


def counted_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the matrix products and convolutions that fn runs (forward and, if it runs one, backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def autocast(precision: str) -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def reference_gflops(repeats: int) -> float:
    """fp32 rate of a large 1x1 Conv1d forward: the machine's practical GEMM ceiling."""
    conv = nn.Conv1d(512, 1536, kernel_size=1)
    x = torch.randn(64, 512, CROP_FRAMES)
    with torch.no_grad():
        flops = counted_flops(lambda: conv(x))  # also the warm-up
        return flops / median_seconds(lambda: conv(x), repeats) / 1e9


def train_step(model: nn.Module, head: nn.Module, optimizer: torch.optim.Optimizer, feats: Tensor,
               labels: Tensor, precision: str) -> Callable[[], None]:
    def step() -> None:
        with autocast(precision):
            loss, _ = head(model(feats), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def bench_model(name: str, args: argparse.Namespace, generator: torch.Generator) -> dict[str, float]:
    model = build_model(name, n_mels=N_MELS)
    head = build_head("aam", embed_dim=model.embed_dim, num_speakers=args.speakers, margin=0.2, scale=30.0)
    params = sum(p.numel() for p in model.parameters())

    model.eval()
    crop = torch.randn(1, CROP_FRAMES, N_MELS, generator=generator)
    utterance = torch.randn(1, EMBED_FRAMES, N_MELS, generator=generator)
    with torch.no_grad(), autocast(args.precision):
        macs = counted_flops(lambda: model(crop)) / 2
        model(utterance)  # warm-up
        embed_s = median_seconds(lambda: model(utterance), 3)

    model.train()
    feats = torch.randn(args.batch_size, CROP_FRAMES, N_MELS, generator=generator)
    labels = torch.randint(0, args.speakers, (args.batch_size,), generator=generator)
    optimizer = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=1e-4)
    step = train_step(model, head, optimizer, feats, labels, args.precision)
    train_flops = counted_flops(step)  # the warm-up step
    step_s = median_seconds(step, args.steps)
    return {"params": params, "macs": macs, "step_s": step_s, "train_gflops": train_flops / step_s / 1e9,
            "embed_s": embed_s}


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), metavar="MODEL",
                        help=f"(default: all: {', '.join(MODELS)})")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per model (default: %(default)s)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="fp32, or bf16 autocast for the models (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="(default: %(default)s)")
    parser.add_argument("--speakers", type=int, default=1000, help="AAM head classes (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    configure_malloc()  # the allocator setting train.py applies (bench_speed measures it)
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(args.seed)  # model initialisation
    generator = torch.Generator().manual_seed(args.seed)

    log.info("reference: 1x1 Conv1d 512 -> 1536, batch 64 x %d frames", CROP_FRAMES)
    reference = reference_gflops(repeats=5)
    rows = []
    for name in args.models:
        log.info("%s: counting, timing the 10 s embedding, then %d + 1 training steps", name, args.steps)
        r = bench_model(name, args, generator)
        rows.append([name, f"{r['params'] / 1e6:.2f}", f"{r['macs'] / 1e9:.2f}", f"{r['step_s']:.2f}",
                     f"{r['train_gflops']:.1f}", f"{100 * r['train_gflops'] / reference:.0f}",
                     f"{r['embed_s'] * 1e3:.0f}"])
    print(f"\n## Models on CPU ({os.cpu_count()} CPUs, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{args.precision}; train step: batch {args.batch_size} x {CROP_FRAMES} frames, AAM over {args.speakers} "
          f"speakers, Adam, median of {args.steps})\n")
    print(table(["model", "params (M)", "GMACs / 2 s", "train step (s)", "train GFLOP/s", "% of ref",
                 "embed 10 s (ms)"], rows))
    print(f"\nReference: fp32 1x1 Conv1d forward (batch 64, 512 -> 1536, {CROP_FRAMES} frames): "
          f"{reference:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
