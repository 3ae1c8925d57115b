"""The train_sort comparison: noisy labels, then each way of cleaning them, retrained; one Markdown table.

    python -m bench.bench_sort --corpus demo --noise 0.1 0.2 --seeds 0 1 2 -- --epochs 8      # every method
    python -m bench.bench_sort --corpus harmonic --methods drop auto oracle-drop --seeds 0 1 2 -- --epochs 8
    python -m bench.bench_sort --keep 5-95 10-90 0-90 0-80 --methods drop    # the earlier comparison of ranges
    python -m bench.bench_sort --methods auto-all oracle-drop --rounds 2 -- --epochs 8   # a row per round
    python -m bench.bench_sort --corpus harmonic --methods relabel-all-cross oracle-drop --versus oracle-drop \
        --held-out corpora/harmonic-test400/test/trials.txt corpora/harmonic-test400/test/wav --seeds 0 1 2

Run from the repository root. `--corpus demo` is the generated demo corpus (the config defaults); `--corpus
harmonic` gives every run `--config recipes/harmonic.yaml`. Every run of a seed shares one config: the
corpus's, the flags after `--` (given to every train.py / train_sort.py run) and `--seed s`; --seeds repeats the
whole experiment per seed, in <root>/<corpus>/seed<s>/:
- clean: train.py on the corpus as it is;
- noisy-<n>: train.py --label-noise n (a seeded fraction n of the utterances moved to another speaker);
and for each noise level the methods (--methods; drop, relabel, auto and subcenter once per --keep range):
- drop: noisy-<n>-keep<lo>-<hi>, train_sort.py --from noisy-<n> --keep lo hi (centroid scores, 1 round);
- relabel, auto: noisy-<n>-keep<lo>-<hi>-<action>, the same with --action relabel / auto;
- relabel-all, auto-all: noisy-<n>-keep<lo>-<hi>-<action>-all, the same with --relabel-from all (any utterance
  clearly nearer another speaker's centre moves, flagged or not);
- relabel-all-unsure: noisy-<n>-keep<lo>-<hi>-relabel-all[-m<M>]-unsure, relabel-all with --drop-unsure (the utterances
  as near another speaker's centre as their own, but not clearly nearer, dropped);
- relabel-all-cross: noisy-<n>-keep<lo>-<hi>-relabel-all[-m<M>]-cross2, relabel-all with --cross-folds 2 (a relabel
  stands where a model trained on the other half of each speaker's utterances agrees; the disputed ones dropped;
  the two half-list models in noisy-<n>-folds2/);
- subcenter: noisy-<n>-subcenter, train.py --label-noise n --loss subcenter_aam (a row of its own: Deng et al.'s
  head alone), then noisy-<n>-subcenter-keep<lo>-<hi>, train_sort.py --sort-by subcenter on it, retrained with
  the noisy run's loss so that the row compares with the others;
- intrain: noisy-<n>-intrain, train.py --label-noise n --filter-share S --filter-warmup W --epochs 2E, E the
  noisy run's epochs: the same total training as a trim-and-retrain (E epochs to rank, E to retrain); S is
  --filter-share (default: the first range's flagged share, 0.2 for 0-80), W --filter-warmup (default E);
- oracle-drop, oracle-relabel: noisy-<n>-oracle-<drop|relabel>, train_sort.py --oracle: exactly the moved
  utterances dropped, or given back their true speaker (a perfect detector). (The earlier `--oracle` flag is
  oracle-drop.)
`--score-average N` gives them train_sort's --score-average N (ranked by the weight average of the source's last N
epoch checkpoints; folders noisy-<n>-keep<lo>-<hi>-avg<N>[-<method>], rows "<method> <range> avg N").
`--relabel-margin M` gives relabel and auto train_sort's --relabel-margin M (folders "-m<M>", rows "margin M").
`--rounds R` gives drop, relabel and auto (and the -all ones) train_sort's --rounds R and a row per round (a
round that stopped because its list was unchanged repeats the previous round's row). Each run is skipped when
its results exist, so a killed bench resumes where it stopped: a training run killed midway, or a train_sort
round, continues from its last checkpoint (train_sort --resume), and a bench with more --rounds than an
earlier one adds rounds to its runs; the runs of one seed may be spread over several processes or machines,
then tabulated together.

Columns (means over the seeds): the utterances removed, and relabelled (in brackets: to their true speaker);
the labels left wrong in the retraining list (moved ones missed or sent to a third speaker, clean ones moved away);
precision and recall of the removed set against the moved one (intrain: its last epoch's left-out set, from
log.csv); "score AUC", how well the ranking score tells
moved from clean utterances of a speaker (1 = every moved one ranks below every clean one); test EER (the
best-val checkpoint's; min-max over the seeds) and minDCF(0.01); "gap closed" = (EER noisy - EER row) /
(EER noisy - EER clean) from the means, with the range of the seeds' own gaps; and the pooled paired verdict
of the row (A) against its noise level's noisy run (B): sweep.pooled, speakers and seeds resampled, on the
score files compare.py reads. `--versus METHOD` adds a column: the same verdict against METHOD's row of the
noise level (e.g. `--versus oracle-drop`: does a method beat a perfect detector's drop?).

`--held-out TRIALS DATA` scores every run's model (the checkpoint its test EER came from) on a second trial
list as well, and tabulates the same rows on it: a list none of the choices was tuned on and, generated
larger than the corpus's own test split, one whose EERs vary less from speaker sampling (the 40 test speakers
of either corpus give a 95 % interval of the EER 4 points wide at 8 %, harmonic, and 3 at 4 %, demo). The
scores go to <run>/held-out/<list>-<sha1>/ (evaluation.evaluate_checkpoint with out=; the run's own scores
and eval/ untouched, the embeddings cached in the run), so a second bench reads them back.
A held-out list from each corpus's own generator, with another seed:

    python -m data.synth_harmonic --out corpora/harmonic-test400 --seed 1 --num-train-speakers 1 \
        --num-val-speakers 2 --num-val-trials 10 --num-test-speakers 400 --test-utts-per-speaker 8 \
        --num-test-trials 20000
    python -m data.synth --out corpora/demo-test400 --seed 1 ... (the same flags)
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

import sweep
import train
import train_sort
from compare import OneLineParser, read_score_file, score_path
from config import FIELDS, Config, build_config, load_yaml
from embedding import file_sha1
from evaluation import evaluate_checkpoint, read_train_list
from metrics import P_TARGETS, verdict
from runs import latest_checkpoint, load_trained
from utils import UserError, atomic_write_text, run_main

log = logging.getLogger("voiceprint")

ROOT = Path(__file__).resolve().parents[1]
CORPUS_CONFIGS = {"demo": None, "harmonic": ROOT / "recipes" / "harmonic.yaml"}  # --config of every run
# train_sort --action ...
SORTED = ("drop", "relabel", "auto", "relabel-all", "auto-all", "relabel-all-unsure", "relabel-all-cross")
METHODS = (*SORTED, "subcenter", "intrain", "oracle-drop", "oracle-relabel")
OWNED = ("seed", "name", "exp_dir", "resume", "label_noise", "filter_share", "filter_warmup")  # set per run
VERDICT_WORDS = {"A better": "better", "B better": "worse", "not resolved": "not resolved"}


@dataclass(frozen=True)
class Plan:
    noises: list[float]
    methods: list[str]
    keeps: list[tuple[float, float]]
    filter_share: float | None  # intrain; None = the first range's flagged share
    filter_warmup: int | None  # intrain; None = the noisy run's epochs
    rounds: int = 1  # train_sort's --rounds of drop, relabel, auto and subcenter: a row per round
    score_average: int = 0  # train_sort's --score-average of drop, relabel and auto (0: rank with best.pt)
    relabel_margin: float | None = None  # train_sort's --relabel-margin of relabel and auto (None: its default)


def corpus_flags(corpus: str) -> list[str]:
    config = CORPUS_CONFIGS[corpus]
    return [] if config is None else ["--config", str(config)]


def parse_keep(text: str) -> tuple[float, float]:
    try:
        low, high = (float(x) for x in text.split("-"))
    except ValueError:
        raise UserError(f"--keep {text}: expected LOW-HIGH percentiles, e.g. 0-80") from None
    return train_sort.percent_range([low, high])


# --- the runs --------------------------------------------------------------------------------------------

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


def round_reports(folder: Path) -> list[dict]:
    """The reports of a train_sort folder's rounds, in order, up to the first missing one."""
    reports = []
    while (path := folder / f"round{len(reports) + 1}" / "report.json").is_file():
        reports.append(json.loads(path.read_text()))
    return reports


def sort_run(root: Path, name: str, source: str, flags: list[str], rounds: int) -> list[tuple[Path, dict]]:
    """train_sort with up to `rounds` rounds (resumed when an earlier bench left some); per round, the folder
    of the model it ends with and its report. A round that stopped (list unchanged) ends with the previous
    round's model, so every seed has `rounds` rows whatever round it stopped at."""
    folder = root / name
    reports = round_reports(folder)
    if len(reports) < rounds and not any(not r["retrained"] for r in reports):
        # --resume: a finished round or fold model is reused, a killed one continues
        log.info("bench_sort: train_sort %s, %d round(s)", folder, rounds)
        train_sort.main(["--exp-dir", str(root), "--name", name, "--from", str(root / source), "--rounds",
                         str(rounds), "--resume", *flags])
        reports = round_reports(folder)
    out: list[tuple[Path, dict]] = []
    for k in range(1, rounds + 1):
        report = reports[k - 1] if k <= len(reports) and reports[k - 1]["retrained"] else None
        out.append((folder / f"round{k}", report) if report else out[-1])
    return out


def saved_config(run: Path) -> Config:
    return build_config({}, base=load_yaml(run / "config.yaml"))


def score_auc(sorted_run: Path, moved: set[str]) -> float:
    """AUC of the per-utterance score (utterance_scores.tsv) for moved vs clean utterances, within-speaker
    percentile ranks pooled; nan without moved utterances."""
    with open(sorted_run / "utterance_scores.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    by_speaker: dict[str, list[dict]] = {}
    for row in rows:
        by_speaker.setdefault(row["speaker"], []).append(row)
    ranks, is_moved = [], []
    for members in by_speaker.values():
        order = np.array([float(r["score"]) for r in members]).argsort().argsort()
        ranks += list((order + 0.5) / len(members))
        is_moved += [r["key"] in moved for r in members]
    return roc_auc_score(is_moved, -np.array(ranks)) if 0 < sum(is_moved) < len(is_moved) else float("nan")


def result_row(name: str, noise: float, method: str, run: Path, r: dict) -> dict:
    return {"id": name, "noise": noise, "method": method, "run": run, "eer": r["eer"],
            "min_dcf": r["min_dcf"][str(P_TARGETS[0])]}


def sort_rows(root: Path, name: str, source: str, noise: float, method: str, flags: list[str],
              moved: set[str], rounds: int = 1) -> list[dict]:
    """A train_sort run (`flags` after the shared ones) as a row per round, with its report's counts."""
    rows = []
    for k, (run, report) in enumerate(sort_run(root, name, source, flags, rounds), start=1):
        suffix = "" if k == 1 else f" round {k}"
        # .get: a report of the earlier train_sort (drop only) has no relabelled counts
        row = {**result_row(name + ("" if k == 1 else f"/round{k}"), noise, method + suffix, run, results(run)),
               "removed": report["removed"], "relabelled": report.get("relabelled", 0),
               "to_true": report.get("relabelled_to_true", 0), "precision": report["precision"],
               "recall": report["recall"]}
        if report.get("still_wrong") is not None:  # reports before the count, and runs without noise, lack it
            row["wrong"] = report["still_wrong"]
        rows.append(row if "--oracle" in flags else {**row, "auc": score_auc(run, moved)})
    return rows


@dataclass(frozen=True)
class Noisy:
    """One noise level's noisy run, what every method starts from."""
    root: Path
    name: str  # noisy-<n>
    noise: float
    flags: list[str]  # the shared flags (corpus, after --, seed)
    moved: set[str]

    def train_flags(self, *extra: str) -> list[str]:
        return ["--label-noise", f"{self.noise:g}", *self.flags, *extra]


def range_name(keep: tuple[float, float]) -> str:
    return f"{keep[0]:g}-{keep[1]:g}"


def sorted_rows(n: Noisy, plan: Plan, method: str) -> list[dict]:
    """drop, relabel, auto, relabel-all, auto-all, relabel-all-unsure, relabel-all-cross: train_sort --action
    (-all: --relabel-from all; -unsure: --drop-unsure; -cross: --cross-folds 2) per range."""
    action, *scope = method.split("-")
    extra = [] if action == "drop" else ["--action", action] + (["--relabel-from", "all"] if "all" in scope else [])
    suffix = "" if action == "drop" else f"-{action}" + ("-all" if "all" in scope else "")  # train_sort's own order
    label = f"{method} {{}}"
    if action != "drop" and plan.relabel_margin is not None:
        extra += ["--relabel-margin", f"{plan.relabel_margin:g}"]
        suffix += f"-m{plan.relabel_margin:g}"
        label += f" margin {plan.relabel_margin:g}"
    if "unsure" in scope:
        extra += ["--drop-unsure"]
        suffix += "-unsure"
    if "cross" in scope:
        extra += ["--cross-folds", "2"]
        suffix += "-cross2"
    if plan.score_average:
        extra += ["--score-average", str(plan.score_average)]
        suffix = f"-avg{plan.score_average}{suffix}"
        label += f" avg {plan.score_average}"
    return [row for k in plan.keeps for row in
            sort_rows(n.root, f"{n.name}-keep{range_name(k)}{suffix}", n.name, n.noise, label.format(range_name(k)),
                      [*n.flags, "--keep", f"{k[0]:g}", f"{k[1]:g}", *extra], n.moved, plan.rounds)]


def subcenter_rows(n: Noisy, plan: Plan) -> list[dict]:
    head = f"{n.name}-subcenter"
    r = train_run(n.root, head, n.train_flags("--loss", "subcenter_aam"))
    rows = [result_row(head, n.noise, "subcenter_aam head", n.root / head, r)]
    loss = saved_config(n.root / n.name).loss  # the retraining's head: the noisy run's
    return rows + [row for k in plan.keeps for row in
                   sort_rows(n.root, f"{head}-keep{range_name(k)}", head, n.noise, f"subcenter {range_name(k)}",
                             [*n.flags, "--keep", f"{k[0]:g}", f"{k[1]:g}", "--sort-by", "subcenter", "--loss", loss],
                             n.moved)]


def filter_settings(plan: Plan, epochs: int) -> tuple[float, int]:
    """intrain's (share, warmup): the plan's, else the first range's flagged share and the noisy run's epochs."""
    low, high = plan.keeps[0]
    share = plan.filter_share if plan.filter_share is not None else (low + 100 - high) / 100
    return share, plan.filter_warmup if plan.filter_warmup is not None else epochs


def last_left_out(run: Path) -> dict[str, float]:
    """An in-training filtered run's last epoch (log.csv): the utterances it left out and, against the moved
    ones, their precision and recall."""
    with open(run / "log.csv") as f:
        last = list(csv.DictReader(f))[-1]
    fields = {"removed": "left_out", "precision": "left_out_precision", "recall": "left_out_recall"}
    return {key: float(last[field]) for key, field in fields.items() if last.get(field)}


def intrain_rows(n: Noisy, plan: Plan) -> list[dict]:
    epochs = saved_config(n.root / n.name).epochs
    share, warmup = filter_settings(plan, epochs)
    name = f"{n.name}-intrain"
    r = train_run(n.root, name, n.train_flags("--filter-share", f"{share:g}", "--filter-warmup", str(warmup),
                                              "--epochs", str(2 * epochs)))
    return [{**result_row(name, n.noise, f"intrain {share:g} after {warmup}", n.root / name, r),
             **last_left_out(n.root / name)}]


def oracle_rows(n: Noisy, mode: str) -> list[dict]:
    return sort_rows(n.root, f"{n.name}-oracle-{mode}", n.name, n.noise, f"oracle-{mode}",
                     [*n.flags, "--oracle", mode], n.moved)


METHOD_ROWS: dict[str, Callable[[Noisy, Plan], list[dict]]] = {
    **{m: (lambda n, plan, m=m: sorted_rows(n, plan, m)) for m in SORTED},
    "subcenter": subcenter_rows,
    "intrain": intrain_rows,
    "oracle-drop": lambda n, plan: oracle_rows(n, "drop"),
    "oracle-relabel": lambda n, plan: oracle_rows(n, "relabel"),
}


def experiment(root: Path, plan: Plan, flags: list[str]) -> list[dict]:
    """Every run of one seed (trained unless its results exist), as rows: id (the run's name), noise, method,
    run (the folder holding its scores), eer, min_dcf and, for the train_sort runs, removed, relabelled,
    to_true, precision, recall (and auc when scored)."""
    rows = [result_row("clean", 0.0, "clean", root / "clean", train_run(root, "clean", flags))]
    for noise in plan.noises:
        name = f"noisy-{noise:g}"
        r = train_run(root, name, ["--label-noise", f"{noise:g}", *flags])
        rows.append(result_row(name, noise, "noisy", root / name, r))
        moved = set(train_sort.read_label_noise(root / name, read_train_list(root / name)))
        n = Noisy(root, name, noise, flags, moved)
        for method in plan.methods:
            rows += METHOD_ROWS[method](n, plan)
    return rows


# --- the held-out list ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class HeldOut:
    """A trial list none of the runs was trained, validated or tuned on (--held-out TRIALS DATA)."""
    trials: Path
    data: Path
    sha1: str

    @property
    def folder(self) -> str:  # <run>/held-out/<this>: another list (or an edited one) gets another folder
        return f"{self.trials.stem}-{self.sha1[:10]}"


def held_out_row(row: dict, held: HeldOut) -> dict:
    """The row with its model (the checkpoint its test EER came from) scored on the held-out list instead:
    evaluate_checkpoint with out=<run>/held-out/<list>-<sha1> (the run's own scores and eval/ untouched; the
    embeddings cached in the run); read back when that folder has its results."""
    run = row["run"]
    out = run / "held-out" / held.folder
    done = out / "eval" / "results.json"
    if not done.is_file():
        checkpoint = run / json.loads((run / "results.json").read_text())["checkpoint"]
        trained = load_trained(checkpoint)
        cfg = build_config({"test_trials": [str(held.trials)], "test_data": str(held.data), "calibrate": "",
                            "score_norm": ["none"], "test_durations": [], "bootstrap": 0},
                           base=dataclasses.asdict(trained.cfg))
        log.info("bench_sort: %s on the held-out list %s", checkpoint, held.trials)
        evaluate_checkpoint(cfg, checkpoint, out=out)
    r = json.loads(done.read_text())["results"][0]
    return {**row, "run": out, "eer": r["eer"], "min_dcf": r["min_dcf"][str(P_TARGETS[0])]}


# --- the table -------------------------------------------------------------------------------------------

def noisy_id(noise: float) -> str:
    return f"noisy-{noise:g}"


def pooled_verdicts(per_seed: list[list[dict]], unit: str, rounds: int,
                    against: Callable[[dict], str | None]) -> dict[str, str]:
    """Each row's pooled paired verdict against the row `against` names (None: no verdict), over the seeds
    (sweep.pooled on the first test list's score files; A = the row, B = the other)."""
    runs = [{row["id"]: row["run"] for row in seed_rows} for seed_rows in per_seed]
    out = {}
    for row in per_seed[0]:
        other = against(row)
        if other is None or other == row["id"]:
            continue
        a = [read_score_file(score_path(r[row["id"]], "", "none")) for r in runs]
        b = [read_score_file(score_path(r[other], "", "none")) for r in runs]
        speakers = sweep.speakers([*a, *b], argparse.Namespace(unit=unit, utt2spk=""))
        point, (low, high) = sweep.pooled(a, b, speakers, rounds)
        out[row["id"]] = (f"{sweep.percent(point)} [{sweep.percent(low)}, {sweep.percent(high)}] "
                          f"{VERDICT_WORDS[verdict((low, high))]}")
    return out


def against_noisy(row: dict) -> str | None:
    """A cleaned row's noisy run (the table's last column); none for the clean and noisy runs."""
    return None if row["noise"] == 0 else noisy_id(row["noise"])


def against_method(rows: list[dict], method: str) -> Callable[[dict], str | None]:
    """--versus METHOD: each noisy-level row against that level's row of METHOD (its name, the first row whose
    label starts with it: "oracle-drop", "relabel-all-cross 0-80 ..."); an error when a level has none."""
    chosen: dict[float, str] = {}
    for row in rows:
        if row["noise"] > 0 and row["noise"] not in chosen and (row["method"] + " ").startswith(method + " "):
            chosen[row["noise"]] = row["id"]
    missing = sorted({r["noise"] for r in rows if r["noise"] > 0} - set(chosen))
    if missing:
        raise UserError(f"--versus {method}: no such row at noise {missing[0]:g}; it must be one of --methods")
    return lambda row: chosen[row["noise"]] if row["noise"] > 0 and row["method"] != "noisy" else None


def gap_cell(row: dict, by_id: list[dict[str, dict]], mean: dict[str, dict]) -> str:
    """Gap closed from the mean EERs, and the range of the seeds' own gaps (n/a where a seed has no gap)."""
    noisy, clean = mean[noisy_id(row["noise"])]["eer"], mean["clean"]["eer"]
    if noisy <= clean:
        return "n/a (no gap)"
    text = f"{100 * (noisy - mean[row['id']]['eer']) / (noisy - clean):.0f}%"
    if len(by_id) == 1:
        return text
    gaps = [(s[noisy_id(row["noise"])]["eer"] - s[row["id"]]["eer"]) / (s[noisy_id(row["noise"])]["eer"] -
                                                                         s["clean"]["eer"])
            for s in by_id if s[noisy_id(row["noise"])]["eer"] > s["clean"]["eer"]]
    return text + (f" ({100 * min(gaps):.0f}% to {100 * max(gaps):.0f}%)" if len(gaps) == len(by_id) else " (n/a)")


def table(per_seed: list[list[dict]], verdicts: dict[str, str],
          versus: tuple[str, dict[str, str]] | None = None) -> str:
    """One row per run of the first seed, matched by id in the others: means over seeds (and the EER's range);
    gap closed from the mean EERs; with `versus` (a method, its verdicts), a last column of them."""
    by_id = [{row["id"]: row for row in seed_rows} for seed_rows in per_seed]
    many = len(per_seed) > 1
    eer_head = f"test EER % (mean of {len(per_seed)} seeds; min-max)" if many else "test EER %"
    lines = [f"| label noise | method | removed | relabelled (to true speaker) | labels left wrong | precision | "
             f"recall | score AUC | {eer_head} | minDCF{P_TARGETS[0]} | gap closed (seeds' range) | vs noisy: A - B "
             "EER % pooled (95% interval) |" + (f" vs {versus[0]}: A - B |" if versus else ""),
             "|" + "---|" * (13 if versus else 12)]
    mean = {}
    for row in per_seed[0]:
        values = [s[row["id"]] for s in by_id]
        mean[row["id"]] = {k: float(np.mean([v[k] for v in values])) for k in row  # a count some seeds lack: blank
                           if isinstance(row[k], float | int) and not isinstance(row[k], bool)
                           and all(k in v for v in values)}
        mean[row["id"]]["eers"] = [100 * v["eer"] for v in values]
    for row in per_seed[0]:
        m = mean[row["id"]]

        def cell(key: str, digits: int, m: dict = m) -> str:  # "-": undefined (precision of no removals)
            return ("-" if np.isnan(m[key]) else f"{m[key]:.{digits}f}") if key in m else ""

        eer = f"{100 * m['eer']:.2f}" + (f" ({min(m['eers']):.2f}-{max(m['eers']):.2f})" if many else "")
        relabelled = f"{cell('relabelled', 0)} ({cell('to_true', 0)})" if "relabelled" in m else ""
        gap = gap_cell(row, by_id, mean) if row["noise"] > 0 and row["id"] != noisy_id(row["noise"]) else ""
        lines.append(f"| {row['noise']:g} | {row['method']} | {cell('removed', 0)} | {relabelled} | "
                     f"{cell('wrong', 0)} | {cell('precision', 2)} | {cell('recall', 2)} | {cell('auc', 3)} | {eer} | "
                     f"{cell('min_dcf', 4)} | {gap} | {verdicts.get(row['id'], '')} |"
                     + (f" {versus[1].get(row['id'], '')} |" if versus else ""))
    return "\n".join(lines) + "\n"


def notes(plan: Plan, corpus: str, rounds: int) -> str:
    text = (f"\nCorpus: {corpus}. Methods: drop / relabel / auto = train_sort.py --action, centroid scores, the "
            "kept range after the name (-all: --relabel-from all; -unsure: --drop-unsure; -cross: --cross-folds 2; "
            "margin M: --relabel-margin M; avg N: ranked by the weight average of the last N epochs; round k: the k-th "
            "round's retrained model); labels left wrong: in the retraining list, against the true speakers; "
            "precision and recall: of the removed utterances against the moved ones ('-': none removed); "
            "subcenter = the noisy list ranked by a --loss subcenter_aam run's dominant "
            "sub-centres, retrained with the noisy run's loss (`subcenter_aam head`: that run itself, no "
            "cleaning); oracle = the moved utterances dropped or given back their true speaker. Verdict: the row "
            f"(A) against its noise level's noisy run (B), speakers and seeds resampled ({rounds} replicates); "
            "better / worse when the 95 % interval of EER(A) - EER(B) excludes 0.\n")
    if "intrain" in plan.methods:
        text += ("intrain = one train.py run with in-training filtering (`intrain S after W`: each speaker's "
                 "highest-loss share S left out of every epoch after the first W) for twice the noisy run's "
                 "epochs: the same total training as trim-and-retrain (the noisy run's epochs to rank, as many "
                 "to retrain); its removed, precision and recall are those of its last epoch's left-out set.\n")
    return text


# --- the command line ------------------------------------------------------------------------------------

def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    cut = argv.index("--") if "--" in argv else len(argv)
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", choices=tuple(CORPUS_CONFIGS), default="demo", help="demo | harmonic")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.1, 0.2], help="label-noise fractions")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="what is compared")
    parser.add_argument("--keep", nargs="+", default=["0-80"], help="kept ranges LOW-HIGH of drop, relabel, "
                        "auto and subcenter")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds; each runs the whole experiment "
                        "in <root>/<corpus>/seed<s> with --seed s, and the table gives means over seeds")
    parser.add_argument("--root", type=Path, default=Path("exp/bench_sort"), help="experiments folder")
    parser.add_argument("--rounds", type=int, default=1, help="train_sort's --rounds for drop, relabel and auto "
                        "(a row per round; a later bench with more rounds reuses the earlier ones)")
    parser.add_argument("--score-average", type=int, default=0, help="train_sort's --score-average N for drop, "
                        "relabel and auto (rank with the weight average of the last N epochs); 0 = best.pt")
    parser.add_argument("--relabel-margin", type=float, default=None, help="train_sort's --relabel-margin for "
                        "relabel and auto (default: train_sort's, config.py relabel_margin)")
    parser.add_argument("--filter-share", type=float, default=None, help="intrain: share left out per epoch "
                        "(default: the first range's flagged share)")
    parser.add_argument("--filter-warmup", type=int, default=None, help="intrain: epochs before filtering "
                        "(default: the noisy run's epochs)")
    parser.add_argument("--unit", choices=("speaker", "trial"), default="speaker", help="what the verdicts resample")
    parser.add_argument("--verdict-rounds", type=int, default=1000, help="bootstrap replicates of the verdicts")
    parser.add_argument("--versus", metavar="METHOD", help="a last column: each row's pooled verdict against "
                        "METHOD's row of its noise level (e.g. oracle-drop; one of --methods)")
    parser.add_argument("--held-out", nargs=2, type=Path, metavar=("TRIALS", "DATA"), help="also score every "
                        "run's model on this trial list (files under DATA), one none of them was tuned on, and "
                        "tabulate that too (scores in <run>/held-out/)")
    parser.add_argument("--oracle", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv[:cut])
    if args.oracle:
        raise UserError("--oracle: replaced by --methods oracle-drop (and oracle-relabel)")
    return args, argv[cut + 1:]


def check(args: argparse.Namespace, flags: list[str]) -> Plan:
    """Everything checked before the first run trains."""
    config = CORPUS_CONFIGS[args.corpus]
    if config is not None and not config.is_file():
        raise UserError(f"--corpus {args.corpus}: {config}: missing (the corpus's recipe)")
    given = sweep.train_overrides([*corpus_flags(args.corpus), *flags])  # train.py's errors, one line
    owned = [k for k in OWNED if k in given]
    if owned:
        raise UserError(f"--{owned[0].replace('_', '-')}: set by bench_sort for each run; not a shared flag")
    if "intrain" in args.methods and "filter_share" not in FIELDS:
        raise UserError("--methods intrain: this train.py has no --filter-share (in-training filtering)")
    if args.filter_share is not None and not 0 < args.filter_share < 1:
        raise UserError(f"--filter-share: must be in (0, 1), got {args.filter_share}")
    if args.rounds < 1:
        raise UserError(f"--rounds: must be >= 1, got {args.rounds}")
    if args.verdict_rounds < 1:
        raise UserError(f"--verdict-rounds: must be >= 1, got {args.verdict_rounds}")
    if args.score_average < 0:
        raise UserError(f"--score-average: must be >= 0, got {args.score_average}")
    if args.relabel_margin is not None and not 0 <= args.relabel_margin < 2:
        raise UserError(f"--relabel-margin: a cosine gain in [0, 2), got {args.relabel_margin}")
    if args.versus is not None and args.versus not in args.methods:
        raise UserError(f"--versus {args.versus}: not one of --methods ({' '.join(args.methods)})")
    return Plan(args.noise, list(dict.fromkeys(args.methods)), [parse_keep(k) for k in args.keep],
                args.filter_share, args.filter_warmup, args.rounds, args.score_average, args.relabel_margin)


def held_out_list(trials: Path, data: Path) -> HeldOut:
    """--held-out TRIALS DATA, checked before anything trains (every file it names is checked when scored)."""
    if not trials.is_file():
        raise UserError(f"--held-out {trials}: no such trial list")
    if not data.is_dir():
        raise UserError(f"--held-out {trials} {data}: no such folder of audio")
    return HeldOut(trials, data, file_sha1(trials))


def tabulate(per_seed: list[list[dict]], args: argparse.Namespace) -> str:
    """The table of these rows, with the verdicts against the noisy runs (and against --versus)."""
    verdicts = pooled_verdicts(per_seed, args.unit, args.verdict_rounds, against_noisy)
    versus = None
    if args.versus:
        versus = (args.versus, pooled_verdicts(per_seed, args.unit, args.verdict_rounds,
                                               against_method(per_seed[0], args.versus)))
    return table(per_seed, verdicts, versus)


def main(argv: list[str] | None = None) -> str:
    args, flags = parse(sys.argv[1:] if argv is None else argv)
    plan = check(args, flags)
    root = args.root / args.corpus
    held = held_out_list(*args.held_out) if args.held_out else None
    per_seed = [experiment(root / f"seed{seed}", plan, [*corpus_flags(args.corpus), *flags, "--seed", str(seed)])
                for seed in args.seeds]
    text = tabulate(per_seed, args)
    if held:
        text += (f"\nThe same models on the held-out list {held.trials} (files under {held.data}; sha1 "
                 f"{held.sha1[:10]}), scored by evaluation.evaluate_checkpoint into <run>/held-out/{held.folder}/:\n\n")
        text += tabulate([[held_out_row(row, held) for row in seed_rows] for seed_rows in per_seed], args)
    text += notes(plan, args.corpus, args.verdict_rounds)
    atomic_write_text(root / "bench_sort.md", text)
    print(text)
    return text


if __name__ == "__main__":
    run_main(main)
