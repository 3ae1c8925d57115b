"""compare.py as a user runs it: a paired verdict from two runs' score files, and one-line errors."""

import subprocess
import sys
from pathlib import Path

import numpy as np

import compare
from tests.conftest import subprocess_env

ROOT = Path(__file__).resolve().parents[1]


def write_run(folder: Path, scores: np.ndarray, labels: np.ndarray, enroll: list[str], test: list[str]) -> Path:
    (folder / "scores").mkdir(parents=True)
    (folder / "scores" / "trials.txt").write_text(
        "".join(f"{e} {t} {s:.6f} {label}\n" for e, t, s, label in zip(enroll, test, scores, labels)))
    return folder


def two_systems(tmp_path: Path, trials: int = 800) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, trials)
    spk_e = rng.integers(0, 20, trials)
    spk_t = np.where(labels == 1, spk_e, (spk_e + rng.integers(1, 20, trials)) % 20)
    enroll = [f"id{s:02d}/e/{i}.wav" for i, s in enumerate(spk_e)]
    test = [f"id{s:02d}/t/{i}.wav" for i, s in enumerate(spk_t)]
    good = labels * 1.0 + rng.normal(0, 0.4, trials)
    bad = good + rng.normal(0, 0.8, trials)
    return (write_run(tmp_path / "A", good, labels, enroll, test),
            write_run(tmp_path / "B", bad, labels, enroll, test))


def run_compare(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "compare.py"), *argv], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)


def test_a_clearly_better_system_wins_and_the_research_log_records_it(tmp_path):
    a, b = two_systems(tmp_path)
    proc = run_compare(str(a), str(b), "--rounds", "200", "--exp-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "verdict (EER): A better" in proc.stdout and "resampled: speakers, 200 replicates" in proc.stdout
    same = compare.main([str(a), str(a), "--rounds", "50", "--exp-dir", str(tmp_path)])
    assert same.verdict == "not resolved" and same.eer == 0
    log = (tmp_path / "comparisons.md").read_text().splitlines()
    assert len(log) == 4 and "A better" in log[2] and "not resolved" in log[3]


def test_bad_inputs_are_one_line_errors(tmp_path):
    a, b = two_systems(tmp_path)
    lines = (b / "scores/trials.txt").read_text().splitlines()
    (b / "scores/trials.txt").write_text("\n".join(lines[1:]) + "\n")
    cases = [((str(a), str(b)), "do not hold the same trials in the same order"),
             ((str(a), str(tmp_path / "nope")), "nope: no such run folder"),
             ((str(a), str(b), "--trials", "other"), "other.txt: no such score file"),
             ((str(a), str(b), "--rounds", "0"), "--rounds: must be >= 1")]
    for argv, message in cases:
        proc = run_compare(*argv)
        assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    (a / "scores/trials.txt").write_text("u1 u2 0.5 1\nu3 u4 0.1 0\n")
    (b / "scores/trials.txt").write_text("u1 u2 0.4 1\nu3 u4 0.2 0\n")
    proc = run_compare(str(a), str(b))
    assert proc.returncode == 2 and "cannot tell the speaker of 'u1'" in proc.stderr
    assert not (tmp_path / "comparisons.md").exists()
