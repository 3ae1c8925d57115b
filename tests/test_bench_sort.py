"""bench.bench_sort on fake results: which runs each method trains (and with which flags), the table, the pooled
verdicts from score files, and its one-line errors. Nothing is trained."""

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bench.bench_relabel as bench_relabel
import bench.bench_sort as bench
import train_sort
from config import SORT_KEYS, Config, build_config
from evaluation import read_train_list
from runs import load_trained
from tests.conftest import subprocess_env
from tests.test_train_sort import plant_noise
from utils import UserError


def row(run: str, noise: float, method: str, eer: float, **extra) -> dict:
    return {"id": run, "noise": noise, "method": method, "run": Path(run), "eer": eer, "min_dcf": 0.5, **extra}


def seed_rows(clean: float, noisy: float, auto: float, oracle: float) -> list[dict]:
    return [row("clean", 0.0, "clean", clean), row("noisy-0.2", 0.2, "noisy", noisy),
            row("noisy-0.2-keep0-80-auto", 0.2, "auto 0-80", auto, removed=10, relabelled=6, to_true=4,
                wrong=3, precision=0.9, recall=0.5, auc=0.98),
            row("noisy-0.2-oracle-drop", 0.2, "oracle-drop", oracle, removed=8, relabelled=0, to_true=0,
                precision=1.0, recall=1.0)]


def test_table_means_over_seeds_gap_closed_and_its_range():
    per_seed = [seed_rows(0.04, 0.07, 0.05, 0.04), list(reversed(seed_rows(0.06, 0.09, 0.07, 0.08)))]  # by id
    verdicts = {"noisy-0.2-keep0-80-auto": "-2.00 [-3.00, -1.00] better"}
    lines = bench.table(per_seed, verdicts).splitlines()
    assert "mean of 2 seeds" in lines[0] and "relabelled (to true speaker)" in lines[0]
    assert lines[2].startswith("| 0 | clean |") and "| 5.00 (4.00-6.00) |" in lines[2]
    assert lines[3].startswith("| 0.2 | noisy |") and lines[3].endswith("|  |  |")
    auto = lines[4]  # means 5, 8, 6: (8 - 6) / (8 - 5); each seed's own gap: 2/3 and 2/3
    assert "| 10 | 6 (4) | 3 | 0.90 | 0.50 | 0.980 | 6.00 (5.00-7.00) | 0.5000 | 67% (67% to 67%) |" in auto
    assert auto.endswith("| -2.00 [-3.00, -1.00] better |")
    oracle = lines[5]  # means 6: 2/3; seeds: 3/3 and 1/3
    assert "| 8 | 0 (0) |  | 1.00 | 1.00 |  | 6.00 (4.00-8.00) |" in oracle  # no wrong-label count: blank
    assert "| 67% (33% to 100%) |" in oracle


def test_table_without_a_gap_and_with_one_seed():
    lines = bench.table([seed_rows(0.07, 0.05, 0.06, 0.05)], {}).splitlines()
    assert "| test EER % |" in lines[0] and "| 6.00 |" in lines[4] and "n/a (no gap)" in lines[4]


def write_scores(run: Path, scores: np.ndarray, labels: np.ndarray) -> None:
    (run / "scores").mkdir(parents=True)
    (run / "scores" / "trials.txt").write_text("".join(
        f"id{i % 8}/a{i}.wav id{(i + (0 if y else 1)) % 8}/b{i}.wav {s:.4f} {y}\n"
        for i, (s, y) in enumerate(zip(scores, labels))))


def test_pooled_verdicts_against_the_noisy_run(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(160) % 2
    per_seed = []
    for seed in (0, 1):
        rows = seed_rows(0.04, 0.07, 0.05, 0.04)
        for r, spread in zip(rows, (0.2, 2.0, 0.2, 2.5)):  # auto separates far better than noisy, oracle worse
            r["run"] = tmp_path / f"seed{seed}" / r["id"]
            write_scores(r["run"], labels + spread * rng.normal(size=160), labels)
        per_seed.append(rows)
    verdicts = bench.pooled_verdicts(per_seed, "speaker", 200, bench.against_noisy)
    assert set(verdicts) == {"noisy-0.2-keep0-80-auto", "noisy-0.2-oracle-drop"}
    assert verdicts["noisy-0.2-keep0-80-auto"].endswith(" better") and " [" in verdicts["noisy-0.2-keep0-80-auto"]
    versus = bench.pooled_verdicts(per_seed, "speaker", 200, bench.against_method(per_seed[0], "oracle-drop"))
    assert set(versus) == {"noisy-0.2-keep0-80-auto"} and versus["noisy-0.2-keep0-80-auto"].endswith(" better")
    auto = bench.pooled_verdicts(per_seed, "speaker", 200, bench.against_method(per_seed[0], "auto"))
    assert set(auto) == {"noisy-0.2-oracle-drop"} and auto["noisy-0.2-oracle-drop"].endswith(" worse")
    lines = bench.table(per_seed, verdicts, ("oracle-drop", versus)).splitlines()
    assert lines[0].endswith("| vs oracle-drop: A - B |") and lines[1] == "|" + "---|" * 13
    assert lines[4].endswith(f"| {verdicts['noisy-0.2-keep0-80-auto']} | {versus['noisy-0.2-keep0-80-auto']} |")
    assert lines[5].endswith("|  |") and lines[3].endswith("|  |  |  |")  # the reference itself; the noisy run
    with pytest.raises(UserError, match="--versus subcenter: no such row at noise 0.2"):
        bench.against_method(per_seed[0], "subcenter")


def test_held_out_list_scores_each_model_beside_its_run(trained_run, tiny_corpus, tmp_path, monkeypatch):
    """--held-out: the checkpoint a row's EER came from, scored on another list into <run>/held-out/<list>-<sha1>
    (the run's own scores and report untouched); read back, not re-scored, when there."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    own = {p: p.read_bytes() for p in [*(run / "scores").iterdir(), *(run / "eval").glob("results.*")]}
    trials = tmp_path / "other.txt"
    trials.write_text((tiny_corpus / "test/trials.txt").read_text())  # the test list under another name
    held = bench.held_out_list(trials, tiny_corpus / "test/wav")
    r = bench.held_out_row(row("run", 0.0, "clean", 0.5) | {"run": run}, held)
    assert r["run"] == run / "held-out" / f"other-{held.sha1[:10]}" and (r["run"] / "scores/other.txt").is_file()
    recorded = json.loads((run / "results.json").read_text())["results"][0]
    assert r["eer"] == pytest.approx(recorded["eer"]) and r["min_dcf"] == pytest.approx(recorded["min_dcf"]["0.01"])
    assert {p: p.read_bytes() for p in own} == own and r["method"] == "clean"
    monkeypatch.setattr(bench, "evaluate_checkpoint", lambda *a, **k: pytest.fail("scored again"))
    assert bench.held_out_row(row("run", 0.0, "clean", 0.5) | {"run": run}, held) == r


def test_each_method_trains_the_runs_it_names(tmp_path, monkeypatch):
    trained, sorted_ = [], []

    def train_run(root, name, flags):
        trained.append((name, flags))
        return {"eer": 0.05, "min_dcf": {"0.01": 0.5}}

    def sort_rows(root, name, source, noise, method, flags, moved, rounds=1):
        sorted_.append((name, source, flags))
        return [row(name, noise, method, 0.05)]

    monkeypatch.setattr(bench, "train_run", train_run)
    monkeypatch.setattr(bench, "sort_rows", sort_rows)
    monkeypatch.setattr(bench, "saved_config", lambda run: build_config({"epochs": 3, "loss": "am"}))
    monkeypatch.setattr(bench, "read_train_list", lambda run: [])
    monkeypatch.setattr(train_sort, "read_label_noise", lambda run, utts: {})
    (tmp_path / "noisy-0.1-intrain").mkdir()
    (tmp_path / "noisy-0.1-intrain/log.csv").write_text("epoch,left_out,left_out_precision,left_out_recall\n"
                                                        "1,,,\n6,30,0.5000,0.4000\n")
    plan = bench.Plan([0.1], list(bench.METHODS), [(0.0, 80.0), (0.0, 90.0)], None, None)
    rows = bench.experiment(tmp_path, plan, ["--epochs", "3", "--seed", "1"])
    assert [name for name, _ in trained] == ["clean", "noisy-0.1", "noisy-0.1-subcenter", "noisy-0.1-intrain"]
    assert trained[2][1][-2:] == ["--loss", "subcenter_aam"] and trained[2][1][:2] == ["--label-noise", "0.1"]
    assert trained[3][1][-6:] == ["--filter-share", "0.2", "--filter-warmup", "3", "--epochs", "6"]
    names = {name: (source, flags) for name, source, flags in sorted_}
    assert list(names) == ["noisy-0.1-keep0-80", "noisy-0.1-keep0-90", "noisy-0.1-keep0-80-relabel",
                           "noisy-0.1-keep0-90-relabel", "noisy-0.1-keep0-80-auto", "noisy-0.1-keep0-90-auto",
                           "noisy-0.1-keep0-80-relabel-all", "noisy-0.1-keep0-90-relabel-all",
                           "noisy-0.1-keep0-80-auto-all", "noisy-0.1-keep0-90-auto-all",
                           "noisy-0.1-keep0-80-relabel-all-unsure", "noisy-0.1-keep0-90-relabel-all-unsure",
                           "noisy-0.1-keep0-80-relabel-all-cross2", "noisy-0.1-keep0-90-relabel-all-cross2",
                           "noisy-0.1-subcenter-keep0-80", "noisy-0.1-subcenter-keep0-90",
                           "noisy-0.1-oracle-drop", "noisy-0.1-oracle-relabel"]
    assert names["noisy-0.1-keep0-90-auto"] == ("noisy-0.1", ["--epochs", "3", "--seed", "1", "--keep", "0", "90",
                                                              "--action", "auto"])
    assert names["noisy-0.1-keep0-80-auto-all"][1][-4:] == ["--action", "auto", "--relabel-from", "all"]
    assert names["noisy-0.1-keep0-80-relabel-all-unsure"][1][-5:] == ["--action", "relabel", "--relabel-from", "all",
                                                                    "--drop-unsure"]
    assert names["noisy-0.1-keep0-80-relabel-all-cross2"][1][-6:] == ["--action", "relabel", "--relabel-from",
                                                                     "all", "--cross-folds", "2"]
    assert names["noisy-0.1-subcenter-keep0-80"][0] == "noisy-0.1-subcenter"
    assert names["noisy-0.1-subcenter-keep0-80"][1][-4:] == ["--sort-by", "subcenter", "--loss", "am"]
    assert names["noisy-0.1-oracle-relabel"][1][-2:] == ["--oracle", "relabel"]
    assert [r["method"] for r in rows][:2] == ["clean", "noisy"] and len(rows) == 2 + 2 * 7 + 3 + 1 + 2
    intrain = next(r for r in rows if r["id"] == "noisy-0.1-intrain")
    assert intrain["method"] == "intrain 0.2 after 3" and (intrain["removed"], intrain["recall"]) == (30, 0.4)

    # --relabel-margin and --score-average: in the relabelling methods' flags, folder names and row labels
    sorted_.clear()
    plan = bench.Plan([0.1], ["drop", "relabel-all-unsure"], [(0.0, 80.0)], None, None, 1, 3, 0.2)
    rows = bench.experiment(tmp_path, plan, ["--seed", "1"])
    assert [name for name, _, _ in sorted_] == ["noisy-0.1-keep0-80-avg3",
                                                "noisy-0.1-keep0-80-avg3-relabel-all-m0.2-unsure"]
    assert sorted_[0][2][-2:] == ["--score-average", "3"] and "--relabel-margin" not in sorted_[0][2]
    assert sorted_[1][2][-7:] == ["--relabel-from", "all", "--relabel-margin", "0.2", "--drop-unsure",
                                  "--score-average", "3"]
    assert [r["method"] for r in rows[2:]] == ["drop 0-80 avg 3", "relabel-all-unsure 0-80 margin 0.2 avg 3"]

def test_rounds_give_a_row_each_resume_the_earlier_rounds_and_repeat_a_stopped_one(tmp_path, monkeypatch):
    """--rounds: train_sort is called with --rounds and --resume (earlier rounds and fold models reused); a row
    per round; a round that stopped (list unchanged) repeats the model, and row, of the round before it."""
    calls = []

    def report(folder, k, retrained=True):
        out = folder / f"round{k}"
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps({"retrained": retrained, "removed": 3 * k, "precision": 0.5,
                                                     "recall": 0.5}))
        if retrained:
            (out / "results.json").write_text(json.dumps({"results": [{"eer": 0.05 / k, "min_dcf": {"0.01": 0.5}}]}))

    def fake_train_sort(argv):
        calls.append(argv)
        folder = Path(argv[argv.index("--exp-dir") + 1]) / argv[argv.index("--name") + 1]
        report(folder, 2, retrained=folder.name != "stops")
    monkeypatch.setattr(train_sort, "main", fake_train_sort)
    monkeypatch.setattr(bench, "score_auc", lambda run, moved: 0.9)
    for name in ("goes-on", "stops"):
        report(tmp_path / name, 1)  # an earlier bench's single round
        rows = bench.sort_rows(tmp_path, name, "noisy-0.2", 0.2, "auto 0-80", ["--seed", "0"], set(), rounds=2)
        assert "--resume" in calls[-1] and calls[-1][calls[-1].index("--rounds") + 1] == "2"
        assert [r["id"] for r in rows] == [name, f"{name}/round2"]
        assert [r["method"] for r in rows] == ["auto 0-80", "auto 0-80 round 2"]
        assert rows[0]["eer"] == 0.05 and rows[1]["eer"] == (0.025 if name == "goes-on" else 0.05)
    n = len(calls)
    bench.sort_rows(tmp_path, "goes-on", "noisy-0.2", 0.2, "auto 0-80", [], set(), rounds=2)
    bench.sort_rows(tmp_path, "stops", "noisy-0.2", 0.2, "auto 0-80", [], set(), rounds=3)
    assert len(calls) == n  # all there, or stopped: nothing to run


@pytest.mark.parametrize("argv, message", [
    (["--oracle"], "--oracle: replaced by --methods oracle-drop"),
    (["--methods", "trim"], "argument --methods: invalid choice: 'trim'"),
    (["--keep", "80-80"], "keeps nothing"),
    (["--", "--seed", "3"], "--seed: set by bench_sort for each run"),
    (["--", "--lr", "x"], "lr: cannot use 'x'"),
    (["--filter-share", "1.5"], "--filter-share: must be in (0, 1)"),
    (["--rounds", "0"], "--rounds: must be >= 1"),
    (["--methods", "drop", "--versus", "oracle-drop"], "--versus oracle-drop: not one of --methods (drop)"),
    (["--held-out", "nowhere.txt", "."], "--held-out nowhere.txt: no such trial list"),
])
def test_bad_command_lines_fail_before_any_run(argv, message, tmp_path):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        bench.main(["--root", str(tmp_path), *argv])
    assert not any(tmp_path.iterdir())


def test_a_corpus_without_its_recipe_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setitem(bench.CORPUS_CONFIGS, "harmonic", tmp_path / "harmonic.yaml")
    with pytest.raises(UserError, match="--corpus harmonic: .*harmonic.yaml: missing"):
        bench.main(["--root", str(tmp_path), "--corpus", "harmonic"])


def test_bench_relabel_applies_train_sorts_own_rule(trained_run, tmp_path, capsys):
    """bench_relabel's counts on a run with 4 planted moves are those of train_sort's own selection, ranked by
    best.pt and by the --score-average 1 checkpoint, with centroid and class-weight scores and centres."""
    run = tmp_path / "demo" / "seed0" / "noisy-0.2"
    plant_noise(trained_run, run)
    bench_relabel.main(["--corpus", "demo", "--seeds", "0", "--root", str(tmp_path), "--keep", "0", "50",
                        "--margins", "0", "0.1", "--score-average", "0", "1", "--sort-by", "centroid",
                        "class_weight"])
    table = {tuple(row.split(" | ")[2:5]): [int(x) for x in row.strip(" |").split(" | ")[5:]]
             for row in capsys.readouterr().out.splitlines()[2:]}
    # per model: centroid noisy + 5 rules + applied 3 times; class_weight noisy + 5 rules (unsure: margin 0.1 only)
    assert len(table) == 26 and table[("best.pt", "centroid", "noisy")] == [0, 0, 4, 0]
    utts = read_train_list(run)
    noise = train_sort.read_label_noise(run, utts)
    for average, model in ((0, "best.pt"), (1, "average of the last 1")):
        trained = load_trained(train_sort.scoring_checkpoint(run, Config(score_average=average)))
        rows = train_sort.class_rows(trained, utts, run)
        for sort_by in ("centroid", "class_weight"):
            for margin in (0.0, 0.1):
                for relabel_from, drop_unsure in (("flagged", False), ("all", False), ("all", True)):
                    if drop_unsure and margin == 0:
                        continue
                    cfg = dataclasses.replace(trained.cfg, keep=[0.0, 50.0], action="relabel", sort_by=sort_by,
                                              relabel_margin=margin, relabel_from=relabel_from,
                                              drop_unsure=drop_unsure)
                    chosen = train_sort.select(trained, utts, rows, cfg, noise)
                    found = train_sort.outcome(utts, chosen.labels, noise)
                    rule = f"margin {margin:g}, from {relabel_from}" + (", unsure dropped" if drop_unsure else "")
                    relabelled, to_true, wrong, dropped = table[(model, sort_by, rule)]
                    assert (relabelled, to_true) == (found["relabelled"], found["relabelled_to_true"])
                    assert (wrong, dropped) == (found["still_wrong"], found["removed"])


def test_bench_relabel_cross_folds_rows_are_train_sorts_cross_checked_selection(trained_run, tmp_path, capsys):
    """--cross-folds 2: the rows of train_sort --cross-folds 2's rule, with the fold models train_sort trained
    (found beside the noisy run), equal train_sort's own selection; without the fold models, a one-line error."""
    run = tmp_path / "demo" / "seed0" / "noisy-0.2"
    plant_noise(trained_run, run)
    argv = ["--corpus", "demo", "--seeds", "0", "--root", str(tmp_path), "--margins", "0", "0.1",
            "--score-average", "0", "--cross-folds", "2"]
    with pytest.raises(UserError, match="noisy-0.2-folds2/fold0: no finished fold model; train_sort --cross-folds 2"):
        bench_relabel.main(argv)
    utts = read_train_list(run)
    noise = train_sort.read_label_noise(run, utts)
    trained = load_trained(train_sort.scoring_checkpoint(run, Config()))
    saved = {k: v for k, v in dataclasses.asdict(trained.cfg).items() if k not in SORT_KEYS}
    cfg = build_config({"exp_dir": str(run.parent), "threads": 1, "action": "relabel", "relabel_from": "all",
                        "cross_folds": 2}, base=saved)
    folds = train_sort.fold_models(cfg, run, saved, utts, noise)
    capsys.readouterr()
    bench_relabel.main(argv)
    table = {row.split(" | ")[4]: [int(x) for x in row.strip(" |").split(" | ")[5:]]
             for row in capsys.readouterr().out.splitlines()[2:]}
    rows = train_sort.class_rows(trained, utts, run)
    for margin in (0.0, 0.1):
        chosen = train_sort.select(trained, utts, rows, dataclasses.replace(cfg, relabel_margin=margin), noise, folds)
        found = train_sort.outcome(utts, chosen.labels, noise)
        assert table[f"margin {margin:g}, from all, cross-checked by 2 folds"] == [
            found["relabelled"], found["relabelled_to_true"], found["still_wrong"], found["removed"]]
        assert found["removed"] == chosen.extra["disputed"]


@pytest.mark.parametrize("flags, message", [
    (["--relabel-margin", "-0.1"], "--relabel-margin: a cosine gain in [0, 2), got -0.1"),
    (["--relabel-margin", "x"], "--relabel-margin: invalid float value: 'x'"),
    (["--methods", "unsure"], "--methods: invalid choice: 'unsure'"),
    (["--held-out", "nowhere.txt", "."], "--held-out nowhere.txt: no such trial list"),
    (["--methods", "drop", "--versus", "oracle-drop"], "--versus oracle-drop: not one of --methods (drop)"),
])
def test_bad_flags_are_one_line_errors(tmp_path, flags, message):
    proc = subprocess.run([sys.executable, "-m", "bench.bench_sort", "--root", str(tmp_path), *flags],
                          cwd=Path(__file__).resolve().parents[1], env=subprocess_env(), capture_output=True,
                          text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written


def test_bench_relabel_bad_cross_folds_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError, match=r"^--cross-folds: 0 \(off\) or the number of folds, at least 2; got 1$"):
        bench_relabel.main(["--root", str(tmp_path), "--cross-folds", "1"])
