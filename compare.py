"""Paired comparison of two systems on the same trial list: is A better than B, or is the difference not
resolved by this list?

    python compare.py exp/A exp/B                          # their first test list, cosine scores
    python compare.py exp/A exp/B --trials list_test_hard2 --score-norm asnorm --rounds 2000
    python compare.py exp/A exp/B --unit trial             # resample trials instead of speakers

Reads the per-trial score files `scores/<trials>[.<norm>].txt` that evaluation wrote for each run (train.py's
final test, or `python inference.py --checkpoint RUN`), checks that both hold the same trials in the same
order, and resamples them together: each bootstrap replicate draws the same speakers (metrics.paired_comparison;
`--unit trial`: the same trials) for both systems, so what the two lists share cancels and the interval is
that of the difference. Verdict on the EER: "A better" / "B better" when the 95 % interval of EER(A) - EER(B)
excludes 0, else "not resolved". Prints the result and appends a row to <exp_dir>/comparisons.md, the research
log of comparisons.

The speaker of a trial side is the first folder of its key (VoxCeleb layout: id10270/x6uYqmx31kE/00001.wav);
for keys without one (Kaldi utterance ids) pass --utt2spk FILE.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metrics import CONFIDENCE, P_TARGETS, PairedComparison, compute_eer, paired_comparison, trial_speakers
from utils import UserError, append_table_row, run_main


@dataclass(frozen=True)
class ScoreFile:
    path: Path
    enroll: list[str]
    test: list[str]
    scores: np.ndarray
    labels: np.ndarray


def read_score_file(path: Path) -> ScoreFile:
    """`enroll test score label` per line, as evaluation.write_scores writes it."""
    if not path.is_file():
        raise UserError(f"{path}: no such score file; evaluate the run first (python inference.py --checkpoint RUN)")
    enroll, test, scores, labels = [], [], [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        try:
            e, t, s, label = parts
            scores.append(float(s))
            labels.append(int(label))
        except ValueError:
            raise UserError(f"{path}:{n}: expected 'enroll test score label', got {line!r}") from None
        enroll.append(e)
        test.append(t)
    values = np.array(scores)
    if not np.isfinite(values).all():
        raise UserError(f"{path}: {int((~np.isfinite(values)).sum())} scores are NaN or infinite")
    return ScoreFile(path, enroll, test, values, np.array(labels))


def score_path(run: Path, trials: str, norm: str) -> Path:
    if not trials:  # the run's first list: the score file without a suffix that sorts first
        plain = sorted(p for p in (run / "scores").glob("*.txt") if p.name.count(".") == 1)
        if not plain:
            raise UserError(f"{run / 'scores'}: no score files; evaluate the run first")
        trials = plain[0].stem
    return run / "scores" / (f"{trials}.txt" if norm == "none" else f"{trials}.{norm}.txt")


def speakers_of(keys: list[str], utt2spk: dict[str, str] | None, source: Path) -> list[str]:
    if utt2spk is not None:
        missing = [k for k in keys if k not in utt2spk]
        if missing:
            raise UserError(f"{source}: no speaker for '{missing[0]}' in the --utt2spk file")
        return [utt2spk[k] for k in keys]
    if not all("/" in k for k in keys):
        first = next(k for k in keys if "/" not in k)
        raise UserError(f"{source}: cannot tell the speaker of '{first}' (no folder in the key); pass --utt2spk "
                        f"FILE or --unit trial")
    return [k.split("/", 1)[0] for k in keys]


def read_utt2spk(path: str) -> dict[str, str] | None:
    if not path:
        return None
    if not Path(path).is_file():
        raise UserError(f"{path}: no such utt2spk file")
    pairs = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    bad = next((i for i, p in enumerate(pairs, 1) if len(p) != 2), None)
    if bad:
        raise UserError(f"{path}:{bad}: expected '<utterance> <speaker>'")
    return dict(pairs)


def compare(a: ScoreFile, b: ScoreFile, unit: str, utt2spk: dict[str, str] | None, rounds: int,
            seed: int) -> PairedComparison:
    if (a.enroll, a.test) != (b.enroll, b.test) or not np.array_equal(a.labels, b.labels):
        raise UserError(f"{a.path} and {b.path} do not hold the same trials in the same order")
    speakers = None
    if unit == "speaker":
        speakers = trial_speakers(speakers_of(a.enroll, utt2spk, a.path), speakers_of(a.test, utt2spk, a.path))
    return paired_comparison(a.scores, b.scores, a.labels, speakers, P_TARGETS, rounds=rounds,
                             confidence=CONFIDENCE, seed=seed)


COLUMNS = ["A", "B", "scores", "resampled", "EER % A", "EER % B", "A - B (95% interval)",
           f"minDCF{P_TARGETS[0]} A - B (95% interval)", "verdict (EER)"]


def report(a: ScoreFile, b: ScoreFile, result: PairedComparison, names: tuple[str, str]) -> dict[str, str]:
    eer_a, eer_b = compute_eer(a.scores, a.labels).eer, compute_eer(b.scores, b.labels).eer
    low, high = result.eer_ci
    p = P_TARGETS[0]
    d_low, d_high = result.min_dcf_ci[p]
    return {"A": names[0], "B": names[1], "scores": a.path.name,
            "resampled": f"{result.unit}s, {result.rounds} replicates",
            "EER % A": f"{100 * eer_a:.2f}", "EER % B": f"{100 * eer_b:.2f}",
            "A - B (95% interval)": f"{100 * result.eer:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]",
            f"minDCF{p} A - B (95% interval)": f"{result.min_dcf[p]:+.4f} [{d_low:+.4f}, {d_high:+.4f}]",
            "verdict (EER)": result.verdict}


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage dump
        raise UserError(message)


def add_comparison_flags(parser: argparse.ArgumentParser, rounds_help: str = "bootstrap replicates") -> None:
    """The flags of a paired comparison (which score files, what is resampled), shared with sweep.py;
    `check_comparison_flags` after parsing."""
    parser.add_argument("--trials", default="", help="trial list name (its score file's stem); default: the first")
    parser.add_argument("--score-norm", default="none", help="none | snorm | asnorm (which score files)")
    parser.add_argument("--unit", default="speaker", choices=("speaker", "trial"), help="what is resampled")
    parser.add_argument("--utt2spk", default="", help="speaker of each trial key, for keys without a folder")
    parser.add_argument("--rounds", type=int, default=1000, help=rounds_help)


def check_comparison_flags(args: argparse.Namespace) -> None:
    if args.rounds < 1:
        raise UserError(f"--rounds: must be >= 1, got {args.rounds}")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", metavar="RUN_A", help="run folder of system A")
    parser.add_argument("b", metavar="RUN_B", help="run folder of system B")
    add_comparison_flags(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--exp-dir", default="exp", help="where comparisons.md, the research log, lives")
    args = parser.parse_args(argv)
    check_comparison_flags(args)
    return args


def main(argv: list[str] | None = None) -> PairedComparison:
    args = parse(argv)
    runs = Path(args.a), Path(args.b)
    for run in runs:
        if not run.is_dir():
            raise UserError(f"{run}: no such run folder")
    a, b = (read_score_file(score_path(run, args.trials, args.score_norm)) for run in runs)
    result = compare(a, b, args.unit, read_utt2spk(args.utt2spk), args.rounds, args.seed)
    row = report(a, b, result, (str(runs[0]), str(runs[1])))
    print("\n".join(f"{k}: {v}" for k, v in row.items()))
    append_table_row(Path(args.exp_dir) / "comparisons.md", COLUMNS, row)
    return result


if __name__ == "__main__":
    run_main(main)
