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

import numpy as np
import torch

import inference
from data.dataset import read_trials, trial_paths
from scoring import Scorer
from utils import configure_malloc, resolve_device, run_main, verification_metrics

log = logging.getLogger("voiceprint")


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="", help="checkpoint or experiment folder (default: newest run)")
    parser.add_argument("--exp-dir", default="exp")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    configure_malloc()
    ckpt = inference.find_checkpoint(args.checkpoint, args.exp_dir)
    trained = inference.load_trained(ckpt)
    cfg, device = trained.cfg, resolve_device(args.device)
    trials_path = cfg.test_trials[0]
    trials = read_trials(trials_path)
    paths = trial_paths(trials, cfg.test_data, trials_path)
    labels = np.array([t.label for t in trials])
    model, frontend = trained.model.to(device), inference.build_frontend(cfg).to(device)
    emb, rows = {}, []
    for precision in ("fp32", "bf16"):
        log.info("embedding %d files in %s", len(paths), precision)
        emb[precision] = inference.extract_embeddings(model, frontend, paths, sample_rate=cfg.sample_rate,
                                                      device=device, precision=precision,
                                                      batch_size=cfg.eval_batch_size)
        m = verification_metrics(Scorer().score_trials(trials, emb[precision], emb[precision], "none"), labels)
        rows.append(f"| {precision} | {100 * m.eer.eer:.2f} | {m.min_dcf[0.01].min_dcf:.4f} | "
                    f"{m.min_dcf[0.05].min_dcf:.4f} |")
    cos = np.array([float(np.dot(emb["fp32"][k], emb["bf16"][k])) for k in paths])  # both L2-normalised
    text = (f"{ckpt} on {trials_path} ({len(trials)} trials, {len(paths)} files), device {device}, torch "
            f"{torch.__version__}\n\n| precision | EER % | minDCF0.01 | minDCF0.05 |\n|---|---|---|---|\n"
            + "\n".join(rows) + f"\n\ncosine(fp32, bf16) per file: mean {cos.mean():.6f}, min {cos.min():.6f}\n")
    print(text)
    return text


if __name__ == "__main__":
    run_main(main)
