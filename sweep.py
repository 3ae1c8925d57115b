"""Multi-seed runs and small grids of flags: each (configuration, seed) its own train.py run, one research-log
row per configuration with the mean over seeds and the paired verdict against a baseline configuration.

    python sweep.py --seeds 0 1 2 --name lr -- --epochs 12                        # one configuration, 3 seeds
    python sweep.py --seeds 0 1 2 --name lr --grid lr=0.0005,0.001 --baseline lr=0.0005 -- --epochs 12
    python sweep.py --seeds 0 1 2 --name masks --grid freq_masks=1 --baseline lr/lr=0.001 -- --lr 0.001 --epochs 12

Everything after `--` is train.py's command line, shared by every run; `--grid KEY=V1,V2 ...` adds the cross
product of the values (a Config key; an on/off key takes true/false; a list key's items are separated by
spaces). The run of configuration LABEL and seed S is <exp_dir>/<name>/<LABEL>/seed<S> (LABEL: `base` without
a grid, else `key=value+key=value`); the runs are trained one after another in this process (train.main). A
run with results.json is finished and skipped; one with an epoch checkpoint is resumed (--resume), so a killed
sweep continues where it stopped when started again. A finished run whose saved config holds other values of
the flags given is an error (another --name).

The row of a configuration in <exp_dir>/sweeps.md (printed as a table at the end) holds its flags as
key=value (data locations and run-time flags left out), the seeds, the test EER mean and min-max over the
seeds and the minDCF mean, computed from each run's score file (`scores/<trials>[.<norm>].txt`, as compare.py
reads it). Against the baseline (--baseline: a LABEL of this
sweep, or `<sweep>/<LABEL>` of an earlier one under the same exp_dir) it holds, per seed, EER(A) - EER(B) and
compare.py's verdict for seed S of A against seed S of B (metrics.paired_comparison: the same speakers
resampled for both), and a pooled verdict on the mean difference over seeds. The pooled interval is a
two-level bootstrap (speakers and seeds are both random factors of a configuration's result; Bouthillier et
al. 2021, "Accounting for variance in machine learning benchmarks"): replicate r draws one set of test
speakers for all seeds (they share the trial list; metrics.paired_replicates with one bootstrap seed) and S
seeds with replacement, and averages the drawn seeds' differences under that draw; the 95 % percentile
interval of these means gives the verdict. With 2-3 seeds the seed level is coarse (a bootstrap of S values
underestimates their spread by a factor (S-1)/S); with one seed the pooled verdict is that seed's.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import typing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import train
from compare import (
    OneLineParser,
    ScoreFile,
    add_comparison_flags,
    check_comparison_flags,
    read_score_file,
    read_utt2spk,
    score_path,
    speakers_of,
)
from config import FIELDS, SCOPES, Config, build_config, load_yaml, make_parser, parse_args
from metrics import (
    CONFIDENCE,
    P_TARGETS,
    TrialSpeakers,
    paired_comparison,
    paired_replicates,
    trial_speakers,
    verdict,
    verification_metrics,
)
from runs import latest_checkpoint
from utils import UserError, append_table_row, markdown_table, run_main

OWNED = ("seed", "name", "exp_dir", "resume")  # keys sweep.py sets for each run: not in the shared flags
UNCHECKED = {"num_workers", "threads", "device", "dist_timeout_min", "tensorboard", "keep_checkpoints",
             "checkpoint_every", "init_from"}  # flags a finished run may have had other values of
WHERE = {"exp_dir", "demo_corpus", "train_data", "val_data", "val_trials", "test_data", "test_trials", "musan",
         "rirs", "calibrate_data", "bootstrap"}  # left out of the row's flags: where the data is, not the recipe


@dataclass(frozen=True)
class Configuration:
    label: str  # folder name under the sweep: "base", or "key=value+key=value"
    flags: list[str]  # train.py flags of the grid point, after the shared ones


# --- the command line ----------------------------------------------------------------------------------

def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The sweep's own flags (before `--`) and train.py's command line (after it)."""
    cut = argv.index("--") if "--" in argv else len(argv)
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="one run per seed")
    parser.add_argument("--grid", nargs="*", default=[], metavar="KEY=V1,V2", help="values of config keys")
    parser.add_argument("--name", default="sweep", help="the sweep's folder under exp_dir")
    parser.add_argument("--baseline", default="", help="LABEL of this sweep, or SWEEP/LABEL of an earlier one")
    add_comparison_flags(parser, "bootstrap replicates of the verdicts")
    args = parser.parse_args(argv[:cut])
    check_comparison_flags(args)
    if len(set(args.seeds)) != len(args.seeds):
        raise UserError(f"--seeds: each seed once, got {' '.join(map(str, args.seeds))}")
    if not args.name or args.name.startswith("/") or ".." in Path(args.name).parts:
        raise UserError(f"--name: a folder name under exp_dir, got '{args.name}'")
    return args, argv[cut + 1:]


def train_overrides(flags: list[str]) -> dict[str, object]:
    """The config keys train.py's command line `flags` sets (its errors, one line, before any training)."""
    overrides, _ = parse_args(flags, train.__doc__, make_parser(train.__doc__, "train.py"))
    return overrides


def grid_flags(key: str, value: str) -> list[str]:
    flag = "--" + key.replace("_", "-")
    kind = typing.get_type_hints(Config)[key]
    if kind is bool:
        return [flag] if getattr(build_config({key: value}), key) else ["--no-" + key.replace("_", "-")]
    return [flag, *value.split()] if typing.get_origin(kind) is list else [flag, value]


def configurations(grid: list[str]) -> list[Configuration]:
    """The cross product of the --grid values (each checked as a Config value by main, before any run)."""
    axes = []
    for item in grid:
        key, _, values = item.partition("=")
        if not key or not values or "" in values.split(","):
            raise UserError(f"--grid: expected KEY=V1,V2,..., got '{item}'")
        if key not in FIELDS or key not in SCOPES["train.py"] or key in OWNED:
            raise UserError(f"--grid: '{key}' is not a train.py config key the sweep may vary")
        axes.append([(key, v) for v in values.split(",")])
    if not axes:
        return [Configuration("base", [])]
    return [Configuration("+".join(f"{k}={v}" for k, v in point).replace("/", "_"),
                          [f for k, v in point for f in grid_flags(k, v)]) for point in itertools.product(*axes)]


# --- the runs -------------------------------------------------------------------------------------------

def run_flags(shared: list[str], c: Configuration, name: str, seed: int) -> list[str]:
    return [*shared, *c.flags, "--seed", str(seed), "--name", f"{name}/{c.label}/seed{seed}"]


def check_finished(run: Path, flags: list[str]) -> None:
    """A finished run skipped by the sweep must be the run these flags ask for."""
    given = train_overrides(flags)
    saved, wanted = build_config({}, base=load_yaml(run / "config.yaml")), build_config(given)
    for key in sorted(given.keys() - UNCHECKED - {"name", "resume", "exp_dir"} | {"seed"}):
        if getattr(saved, key) != getattr(wanted, key):
            raise UserError(f"{run}: a finished run with {key} {getattr(saved, key)!r}, not {getattr(wanted, key)!r} "
                            f"as asked; use another --name")


def train_run(exp_dir: Path, flags: list[str], name: str) -> str:
    """Train, resume or skip one run; what was done."""
    run = exp_dir / name
    if (run / "results.json").is_file():
        check_finished(run, flags)
        return "skipped (finished)"
    if (run / "checkpoints").is_dir() and latest_checkpoint(run) is not None:
        train.main([*flags, "--resume"])
        return "resumed"
    train.main(flags)
    return "trained"


# --- the research-log row -------------------------------------------------------------------------------

def seed_scores(folder: Path, seeds: list[int], args: argparse.Namespace) -> list[ScoreFile]:
    return [read_score_file(score_path(folder / f"seed{s}", args.trials, args.score_norm)) for s in seeds]


def speakers(files: list[ScoreFile], args: argparse.Namespace) -> TrialSpeakers | None:
    """The trial speakers for the speaker bootstrap (None with --unit trial); every file the same trials."""
    first = files[0]
    for f in files[1:]:
        if (f.enroll, f.test) != (first.enroll, first.test) or not np.array_equal(f.labels, first.labels):
            raise UserError(f"{f.path} and {first.path} do not hold the same trials in the same order")
    if args.unit == "trial":
        return None
    utt2spk = read_utt2spk(args.utt2spk)
    return trial_speakers(speakers_of(first.enroll, utt2spk, first.path), speakers_of(first.test, utt2spk, first.path))


def pooled(a: list[ScoreFile], b: list[ScoreFile], spk: TrialSpeakers | None,
           rounds: int) -> tuple[float, tuple[float, float]]:
    """Mean over seeds of EER(A_s) - EER(B_s) and its two-level bootstrap interval (module docstring)."""
    diffs = np.stack([paired_replicates(x.scores, y.scores, x.labels, spk, P_TARGETS, rounds=rounds, seed=0)[0]
                      for x, y in zip(a, b)])  # (S, rounds): one speaker draw per replicate for every seed
    drawn = np.random.default_rng(0).integers(0, len(a), size=(rounds, len(a)))  # (rounds, S) seeds drawn
    means = diffs[drawn, np.arange(rounds)[:, None]].mean(axis=1)  # (rounds,)
    point = float(np.mean([verification_metrics(x.scores, x.labels).eer.eer
                           - verification_metrics(y.scores, y.labels).eer.eer for x, y in zip(a, b)]))
    low, high = np.nanquantile(means, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return point, (float(low), float(high))


COLUMNS = ["sweep", "configuration", "flags", "seeds", "EER % mean (min-max)", f"minDCF{P_TARGETS[0]} mean",
           "baseline", "A - B EER % per seed (verdict)", "A - B EER % pooled (95% interval)", "pooled verdict",
           "resampled"]


def percent(difference: float) -> str:
    return f"{round(100 * difference, 2) + 0.0:+.2f}"  # + 0.0: no "-0.00"


def row(name: str, c: Configuration, shared: list[str], seeds: list[int], files: list[ScoreFile],
        base: tuple[str, list[ScoreFile]] | None, args: argparse.Namespace) -> dict[str, str]:
    metrics = [verification_metrics(f.scores, f.labels, P_TARGETS) for f in files]
    eers = 100 * np.array([m.eer.eer for m in metrics])
    given = train_overrides([*shared, *c.flags])
    flags = " ".join(f"{k}={' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in given.items()
                     if k not in WHERE | UNCHECKED)
    out = {"sweep": name, "configuration": c.label, "flags": flags,
           "seeds": " ".join(map(str, seeds)),
           "EER % mean (min-max)": f"{eers.mean():.2f} ({eers.min():.2f}-{eers.max():.2f})",
           f"minDCF{P_TARGETS[0]} mean": f"{np.mean([m.min_dcf[P_TARGETS[0]].min_dcf for m in metrics]):.4f}",
           "resampled": f"{args.unit}s, {args.rounds} replicates"}
    if base is None:
        return out
    spk = speakers([*files, *base[1]], args)
    per_seed = [paired_comparison(x.scores, y.scores, x.labels, spk, P_TARGETS, rounds=args.rounds,
                                  confidence=CONFIDENCE, seed=0) for x, y in zip(files, base[1])]
    point, interval = pooled(files, base[1], spk, args.rounds)
    return {**out, "baseline": base[0],
            "A - B EER % per seed (verdict)": "; ".join(f"seed{s} {percent(p.eer)} ({p.verdict})"
                                                       for s, p in zip(seeds, per_seed)),
            "A - B EER % pooled (95% interval)": f"{percent(point)} [{percent(interval[0])}, "
                                                 f"{percent(interval[1])}]",
            "pooled verdict": verdict(interval)}


def baseline_folder(args: argparse.Namespace, exp_dir: Path, labels: list[str]) -> tuple[str, Path] | None:
    if not args.baseline:
        return None
    if args.baseline in labels:
        return args.baseline, exp_dir / args.name / args.baseline
    folder = exp_dir / args.baseline
    if "/" in args.baseline and all((folder / f"seed{s}").is_dir() for s in args.seeds):
        return args.baseline, folder
    raise UserError(f"--baseline: '{args.baseline}' is neither a configuration of this sweep ({', '.join(labels)}) "
                    f"nor an earlier sweep's SWEEP/LABEL under {exp_dir} with a run for each seed")


# --- the sweep ------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> list[dict[str, str]]:
    args, shared = parse(sys.argv[1:] if argv is None else argv)
    given = train_overrides(shared)
    owned = [k for k in OWNED if k in given and k != "exp_dir"]
    if owned:
        raise UserError(f"--{owned[0].replace('_', '-')}: set by sweep.py for each run; not a shared train.py flag")
    exp_dir = Path(str(given.get("exp_dir", Config.exp_dir)))
    configs = configurations(args.grid)
    base = baseline_folder(args, exp_dir, [c.label for c in configs])
    for c in configs:  # every command line checked before the first run trains
        build_config(train_overrides([*shared, *c.flags]))
    for c in configs:
        for s in args.seeds:
            name = f"{args.name}/{c.label}/seed{s}"
            print(f"sweep.py: {name}: {train_run(exp_dir, run_flags(shared, c, args.name, s), name)}", flush=True)
    base_files = (base[0], seed_scores(base[1], args.seeds, args)) if base else None
    rows = []
    for c in configs:
        files = seed_scores(exp_dir / args.name / c.label, args.seeds, args)
        compared = base_files if base and (exp_dir / args.name / c.label) != base[1] else None
        rows.append(row(args.name, c, shared, args.seeds, files, compared, args))
        append_table_row(exp_dir / "sweeps.md", COLUMNS, rows[-1])
    print(markdown_table(COLUMNS, rows), end="")
    return rows


if __name__ == "__main__":
    run_main(main)
