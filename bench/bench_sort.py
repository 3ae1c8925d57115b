"""The train_sort headline experiment: noisy labels, percentile trimming, retraining; one Markdown table.

    python -m bench.bench_sort                                    # noise 0.1, 0.2 x keep 5-95, 10-90, 0-90, 0-80
    python -m bench.bench_sort --seeds 0 1 2 --oracle             # the README's table: 3 seeds, with the oracle
    python -m bench.bench_sort --noise 0.2 --keep 5-95 -- --epochs 4 --channels 256   # flags after -- go to
                                                                  # every train.py / train_sort.py run

Run from the repository root. Every run shares one config and seed (the defaults plus the flags after --;
--seeds repeats the whole experiment per seed):
- clean: train.py on the demo corpus as it is;
- noisy-<n>: train.py --label-noise n (a seeded fraction n of the utterances moved to another speaker);
- noisy-<n>-keep<lo>-<hi>: train_sort.py --from noisy-<n> --keep lo hi (centroid scores, 1 round);
- noisy-<n>-oracle (--oracle): the noisy run's list minus exactly the moved utterances, retrained: what a
  perfect detector would give (it also trains on fewer utterances, like the trimmed runs).
Each run is skipped when its results exist, so a killed bench resumes where it stopped: a training run killed
midway continues from its last epoch checkpoint, a train_sort round is redone (and the runs of one seed may be
spread over several processes or machines, then tabulated together).

Columns: test EER and minDCF(0.01) of the best-val checkpoint; for the trimmed runs, the utterances removed,
the precision and recall of the removed set against the moved one, and "gap closed" = (EER noisy - EER
run) / (EER noisy - EER clean). Detection diagnostics, from the noisy model's per-utterance scores: AUC of
the score for telling moved from clean utterances of a speaker (1 = every moved one ranks below every clean
one), and the "typical share": the fraction of removed utterances from the more typical half of their
speaker (those are hardly ever moved ones: a range that starts above 0 spends that part of its budget on the
most typical clean utterances).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

import train
import train_sort
from config import build_config, parse_args
from evaluation import read_train_list
from runs import latest_checkpoint, load_checkpoint
from utils import UserError, atomic_write_text, run_main

log = logging.getLogger("voiceprint")


def parse_keep(text: str) -> tuple[float, float]:
    try:
        low, high = (float(x) for x in text.split("-"))
    except ValueError:
        raise UserError(f"--keep {text}: expected LOW-HIGH percentiles, e.g. 5-95") from None
    return low, high


def results(run: Path) -> dict | None:
    path = run / "results.json"
    return json.loads(path.read_text())["results"][0] if path.is_file() else None


def train_run(root: Path, name: str, flags: list[str]) -> dict:
    run = root / name
    if results(run) is None:
        # a run killed before its results: resumed (a new run refuses a folder that holds checkpoints)
        resume = ["--resume"] if latest_checkpoint(run) else []
        log.info("bench_sort: %s %s", "resuming" if resume else "training", run)
        train.main(["--exp-dir", str(root), "--name", name, *resume, *flags])
    return results(run)


def sort_run(root: Path, source: str, keep: tuple[float, float], flags: list[str]) -> tuple[Path, dict]:
    name = f"{source}-keep{keep[0]:g}-{keep[1]:g}"
    run = root / name / "round1"
    if results(run) is None:
        partial = run / "checkpoints"
        if partial.is_dir() and any(partial.iterdir()):  # killed mid-round: train_sort cannot resume a round
            log.warning("bench_sort: %s holds an unfinished round; its checkpoints are removed and it is redone", run)
            shutil.rmtree(partial)
        log.info("bench_sort: train_sort %s", run)
        train_sort.main(["--exp-dir", str(root), "--name", name, "--from", str(root / source),
                         "--keep", f"{keep[0]:g}", f"{keep[1]:g}", *flags])
    return run, results(run)


def oracle_run(root: Path, source: str, flags: list[str]) -> dict:
    """The noisy run's list without the moved utterances, retrained with the noisy run's config."""
    run = root / f"{source}-oracle"
    if results(run) is None:
        moved = train_sort.read_moved(root / source)
        kept = [u for u in read_train_list(root / source) if u.key not in moved]
        saved = load_checkpoint(root / source / "checkpoints" / "best.pt")["config"]
        overrides, _ = parse_args(flags, __doc__)
        resume = latest_checkpoint(run) is not None  # killed before its results: resumed
        cfg = build_config({**overrides, "name": run.name, "resume": resume}, base=saved)
        log.info("bench_sort: oracle %s (%d utterances)%s", run, len(kept), ", resumed" if resume else "")
        train.train(cfg, utterances=kept, run=run, kept="oracle: all moved removed")
    return results(run)


def diagnostics(sorted_run: Path, moved: set[str]) -> dict[str, float]:
    """AUC of the per-utterance score for moved vs clean utterances (within-speaker percentile ranks pooled),
    and the fraction of removed utterances from each speaker's more typical half."""
    with open(sorted_run / "utterance_scores.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    by_speaker: dict[str, list[dict]] = {}
    for row in rows:
        by_speaker.setdefault(row["speaker"], []).append(row)
    ranks, is_moved, typical_removed, removed = [], [], 0, 0
    for members in by_speaker.values():
        scores = np.array([float(r["score"]) for r in members])
        order = scores.argsort().argsort()
        ranks += list((order + 0.5) / len(members))
        is_moved += [r["key"] in moved for r in members]
        median = np.median(scores)
        for r, s in zip(members, scores):
            if r["kept"] == "0":
                removed += 1
                typical_removed += s > median
    auc = roc_auc_score(is_moved, -np.array(ranks)) if 0 < sum(is_moved) < len(is_moved) else float("nan")
    return {"auc": auc, "typical_share": typical_removed / removed if removed else 0.0}


def experiment(root: Path, noises: list[float], keeps: list[tuple[float, float]], oracle: bool,
               flags: list[str]) -> list[dict]:
    """Every run of one seed (trained unless its results exist), as rows: name, noise, kept, eer, min_dcf and,
    for the trimmed and oracle runs, removed, precision, recall (and auc, typical share when trimmed)."""
    clean = train_run(root, "clean", flags)
    rows = [{"run": "clean", "noise": 0.0, "kept": "all", "eer": clean["eer"], "min_dcf": clean["min_dcf"]["0.01"]}]
    for noise in noises:
        source = f"noisy-{noise:g}"
        noisy = train_run(root, source, ["--label-noise", f"{noise:g}", *flags])
        rows.append({"run": source, "noise": noise, "kept": "all", "eer": noisy["eer"],
                     "min_dcf": noisy["min_dcf"]["0.01"]})
        moved = train_sort.read_moved(root / source)
        for keep in keeps:
            run, r = sort_run(root, source, keep, flags)
            report = json.loads((run / "report.json").read_text())
            rows.append({"run": f"{source}-keep{keep[0]:g}-{keep[1]:g}", "noise": noise,
                         "kept": f"{keep[0]:g}-{keep[1]:g}", "eer": r["eer"], "min_dcf": r["min_dcf"]["0.01"],
                         "removed": report["total"] - report["kept"], "precision": report["precision"],
                         "recall": report["recall"], **diagnostics(run, moved)})
        if oracle:
            r = oracle_run(root, source, flags)
            rows.append({"run": f"{source}-oracle", "noise": noise, "kept": "all clean", "eer": r["eer"],
                         "min_dcf": r["min_dcf"]["0.01"], "removed": len(moved), "precision": 1.0, "recall": 1.0})
    return rows


def table(per_seed: list[list[dict]]) -> str:
    """One row per run: means over seeds (and the range of the EER when there are several seeds); gap
    closed from the mean EERs."""
    many = len(per_seed) > 1
    eer_head = f"test EER % (mean of {len(per_seed)} seeds; min-max)" if many else "test EER %"
    lines = [f"| run | label noise | kept | removed | precision | recall | score AUC | typical share | {eer_head} | "
             "minDCF0.01 | gap closed |", "|" + "---|" * 11]
    mean = {}
    for i, row in enumerate(per_seed[0]):
        values = [seed_rows[i] for seed_rows in per_seed]
        mean[row["run"]] = {k: float(np.mean([v[k] for v in values])) for k in row if isinstance(row[k], float | int)}
        mean[row["run"]]["eers"] = [100 * v["eer"] for v in values]
    for row in per_seed[0]:
        m = mean[row["run"]]
        eer = f"{100 * m['eer']:.2f}" + (f" ({min(m['eers']):.2f}-{max(m['eers']):.2f})" if many else "")
        gap = ""
        if row["noise"] > 0 and row["kept"] != "all":
            noisy, clean = mean[f"noisy-{row['noise']:g}"]["eer"], mean["clean"]["eer"]
            gap = f"{100 * (noisy - m['eer']) / (noisy - clean):.0f}%" if noisy > clean else "n/a (no gap)"

        def cell(key: str, digits: int, m: dict = m) -> str:
            return f"{m[key]:.{digits}f}" if key in m else ""

        lines.append(f"| {row['run']} | {row['noise']:g} | {row['kept']} | {cell('removed', 0)} | "
                     f"{cell('precision', 2)} | {cell('recall', 2)} | {cell('auc', 3)} | {cell('typical_share', 2)} | "
                     f"{eer} | {cell('min_dcf', 4)} | {gap} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    argv = sys.argv[1:] if argv is None else argv
    flags = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.1, 0.2], help="label-noise fractions")
    parser.add_argument("--keep", nargs="+", default=["5-95", "10-90", "0-90", "0-80"], help="kept ranges LOW-HIGH")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds; each runs the whole experiment "
                        "in <root>/seed<s> with --seed s, and the table gives means over seeds")
    parser.add_argument("--root", type=Path, default=Path("exp/bench_sort"), help="experiments folder")
    parser.add_argument("--oracle", action="store_true", help="also retrain without exactly the moved utterances")
    args = parser.parse_args(own)
    keeps = [parse_keep(k) for k in args.keep]
    per_seed = [experiment(args.root / f"seed{seed}", args.noise, keeps, args.oracle, [*flags, "--seed", str(seed)])
                for seed in args.seeds]
    text = table(per_seed)
    atomic_write_text(args.root / "bench_sort.md", text)
    print(text)
    return text


if __name__ == "__main__":
    run_main(main)
