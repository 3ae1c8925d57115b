"""sweep.py: 2 seeds x 2 configurations trained, one research-log row each with the paired verdict against the
baseline; a second call trains nothing; a killed run is resumed; bad input is a one-line error."""

import subprocess
import sys
from pathlib import Path

import pytest

import sweep
import train
from tests.conftest import subprocess_env, tiny_train_args
from utils import UserError

ROOT = Path(__file__).resolve().parents[1]


def shared_flags(corpus: Path, exp_dir: Path) -> list[str]:
    """The tiny training command line, less --name (sweep.py names each run)."""
    args = tiny_train_args(corpus, exp_dir, "unused", "--epochs", "1", "--bootstrap", "0")
    i = args.index("--name")
    return args[:i] + args[i + 2:]


def sweep_argv(corpus: Path, exp_dir: Path, *extra: str) -> list[str]:
    return ["--seeds", "0", "1", "--name", "s", "--grid", "lr=0.0005,0.001", "--baseline", "lr=0.0005",
            "--rounds", "50", *extra, "--", *shared_flags(corpus, exp_dir)]


def counting_train(monkeypatch) -> list[list[str]]:
    calls: list[list[str]] = []
    real = train.main

    def counted(argv):
        calls.append(argv)
        return real(argv)
    monkeypatch.setattr(train, "main", counted)
    return calls


def test_a_sweep_trains_each_seed_logs_a_row_per_configuration_and_resumes(tiny_corpus, tmp_path, monkeypatch):
    calls = counting_train(monkeypatch)
    rows = sweep.main(sweep_argv(tiny_corpus, tmp_path))
    runs = [tmp_path / "s" / label / f"seed{s}" for label in ("lr=0.0005", "lr=0.001") for s in (0, 1)]
    assert len(calls) == 4 and all((run / "results.json").is_file() for run in runs)
    assert [r["configuration"] for r in rows] == ["lr=0.0005", "lr=0.001"]
    assert "lr=0.001" in rows[1]["flags"] and "channels=16" in rows[1]["flags"] and "train_data" not in rows[1]["flags"]
    assert rows[0]["seeds"] == "0 1" and "baseline" not in rows[0] and rows[1]["baseline"] == "lr=0.0005"
    per_seed = rows[1]["A - B EER % per seed (verdict)"]
    assert per_seed.startswith("seed0 ") and "; seed1 " in per_seed
    assert rows[1]["pooled verdict"] in ("A better", "B better", "not resolved")
    assert " [" in rows[1]["A - B EER % pooled (95% interval)"] and "(" in rows[0]["EER % mean (min-max)"]
    log = (tmp_path / "sweeps.md").read_text().splitlines()
    assert len(log) == 4 and "| lr=0.001 |" in log[3]

    stamps = {run: (run / "results.json").stat().st_mtime_ns for run in runs}
    (runs[3] / "results.json").unlink()  # killed after its last epoch, before the final test
    again = sweep.main(sweep_argv(tiny_corpus, tmp_path))
    assert len(calls) == 5 and "--resume" in calls[4] and "s/lr=0.001/seed1" in calls[4]
    assert all((run / "results.json").stat().st_mtime_ns == stamps[run] for run in runs[:3])
    assert again[0] == rows[0] and again[1]["configuration"] == "lr=0.001"
    assert len((tmp_path / "sweeps.md").read_text().splitlines()) == 6

    with pytest.raises(UserError, match="channels 16, not 32 as asked; use another --name"):
        sweep.main(sweep_argv(tiny_corpus, tmp_path) + ["--channels", "32"])
    with pytest.raises(UserError, match="--name: set by sweep.py for each run"):
        sweep.main(sweep_argv(tiny_corpus, tmp_path) + ["--name", "x"])
    assert len(calls) == 5

    later = sweep.main(["--seeds", "0", "1", "--name", "s2", "--baseline", "s/lr=0.001", "--rounds", "50", "--",
                        *shared_flags(tiny_corpus, tmp_path), "--lr", "0.001", "--freq-masks", "1"])
    assert len(calls) == 7 and [r["configuration"] for r in later] == ["base"]
    assert later[0]["baseline"] == "s/lr=0.001" and "freq_masks=1" in later[0]["flags"]


def run_sweep(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "sweep.py"), *argv], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)


def test_bad_input_is_a_one_line_error(tmp_path):
    proc = run_sweep("--seeds", "0", "1", "--grid", "lr=0.001", "--baseline", "nope", "--",
                     "--exp-dir", str(tmp_path))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "sweep.py: error: --baseline: 'nope' is neither a configuration of this sweep (lr=0.001)" in proc.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0", "0"], "--seeds: each seed once"),
    (["--seeds", "0", "--grid", "lr"], "--grid: expected KEY=V1,V2,..., got 'lr'"),
    (["--seeds", "0", "--grid", "seed=1,2"], "--grid: 'seed' is not a train.py config key"),
    (["--seeds", "0", "--grid", "lr=fast"], "lr: cannot use 'fast' as float"),
    (["--seeds", "0", "--", "--lr-typo", "1"], "unknown flag '--lr-typo'"),
])
def test_bad_input_is_refused_before_any_run(tmp_path, argv, message):
    with pytest.raises(UserError, match=message.replace(".", r"\.").replace("(", r"\(")):
        sweep.main([*argv, *([] if "--" in argv else ["--"]), "--exp-dir", str(tmp_path)])
    assert not list(tmp_path.iterdir())
