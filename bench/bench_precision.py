"""fp32 vs bf16 embeddings of one trained model: how far bf16 moves them, and the EER of each.

    python -m bench.bench_precision                         # the newest run under exp/, its first test list
    python -m bench.bench_precision --checkpoint exp/RUN --device cuda

Embeds every file of the test trial list with the same model twice, under fp32 and under bf16 autocast (the
precision policy of inference.py: fbank, pooling statistics and normalisation in fp32), full length, exact
batching. Prints the mean and the minimum cosine between a file's two embeddings, and the EER and minDCF of
each precision on the list, as a Markdown table.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from data.features import frontend_from_config
from embedding import Embedder, Extraction
from evaluation import EvalPlan, evaluate, load_trial_lists
from runs import find_checkpoint, load_trained
from scoring import Scorer
from utils import UserError, configure_malloc, resolve_device, run_main

log = logging.getLogger("voiceprint")


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="", help="checkpoint or experiment folder (default: newest run)")
    parser.add_argument("--exp-dir", default="exp")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    configure_malloc()
    ckpt = find_checkpoint(args.checkpoint, args.exp_dir)
    trained = load_trained(ckpt)
    cfg, device = trained.cfg, resolve_device(args.device)
    if not cfg.test_trials:
        raise UserError(f"{ckpt}: its config names no test trial list")
    trial_list = load_trial_lists(cfg.test_trials[:1], cfg.test_data)[0]
    trials, paths = trial_list.trials, trial_list.files
    model, frontend = trained.model.to(device), frontend_from_config(cfg).to(device)
    extraction = Extraction(batch_size=cfg.eval_batch_size)  # full length, exact batching
    emb, rows = {}, []
    with tempfile.TemporaryDirectory() as cache:  # evaluate embeds each file once; the cosines read them back
        for precision in ("fp32", "bf16"):  # the precision is part of the cache key: one file each
            log.info("embedding %d files in %s", len(paths), precision)
            embedder = Embedder(model, frontend, device, precision, extraction, cache_dir=Path(cache))
            m = evaluate(embedder, [trial_list], Scorer(), EvalPlan())[0].result
            emb[precision] = embedder.embed(paths)
            rows.append(f"| {precision} | {100 * m.eer:.2f} | {m.min_dcf[0.01]:.4f} | {m.min_dcf[0.05]:.4f} |")
    cos = np.array([float(np.dot(emb["fp32"][k], emb["bf16"][k])) for k in paths])  # both L2-normalised
    text = (f"{ckpt} on {trial_list.path} ({len(trials)} trials, {len(paths)} files), device {device}, torch "
            f"{torch.__version__}\n\n| precision | EER % | minDCF0.01 | minDCF0.05 |\n|---|---|---|---|\n"
            + "\n".join(rows) + f"\n\ncosine(fp32, bf16) per file: mean {cos.mean():.6f}, min {cos.min():.6f}\n")
    print(text)
    return text


if __name__ == "__main__":
    run_main(main)
