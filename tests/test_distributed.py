"""torchrun on CPU processes (gloo): train.py for 3 epochs whose best epoch is not the last, its final test shared
out over the 2 processes equal to inference.py in one, and two "nodes" on one machine killed mid-epoch and
resumed from a mid-epoch checkpoint to the uninterrupted weights. Tiny on purpose: 2 processes x batch 4,
16 channels, 1 s crops; each torchrun start costs most of a test's time."""

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import inference
from embedding import EmbeddingStore
from tests.conftest import subprocess_env, tiny_train_args

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = [sys.executable, "-m", "torch.distributed.run"]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    """2 processes on this machine (torchrun --standalone)."""
    return subprocess.run([*LAUNCH, "--nproc_per_node=2", "--standalone", *args], cwd=ROOT,
                          env=subprocess_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)


def tied_validation_list(corpus: Path, folder: Path) -> Path:
    """A validation list on which every model scores every trial alike: one file against itself, as a target
    and as a non-target trial. Every epoch's val EER is then 0.5, and train.py keeps the first of equal EERs as
    best.pt, so the best epoch is the first, never the last, whatever the weights do."""
    key = (corpus / "val/trials.txt").read_text().split()[1]
    path = folder / "tied_trials.txt"
    path.write_text(f"1 {key} {key}\n0 {key} {key}\n" * 2)
    return path


def ddp_args(corpus: Path, exp: Path, name: str) -> list[str]:
    """3 epochs of 4 batches per rank, 2 optimizer steps each (--accumulate 2), a checkpoint after step 1; the
    final test with AS-norm (its cohort embedded too), each file embedded alone (bit-identical on any rank)."""
    return tiny_train_args(corpus, exp, name, "--epochs", "3", "--batch-size", "4", "--device", "cpu",
                           "--precision", "fp32", "--val-trials", str(tied_validation_list(corpus, exp)),
                           "--accumulate", "2", "--checkpoint-every", "1", "--keep-checkpoints", "0",
                           "--bootstrap", "0", "--eval-batch-size", "1", "--score-norm", "none", "asnorm")


@pytest.fixture(scope="module")
def ddp_run(tiny_corpus, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    exp = tmp_path_factory.mktemp("ddp")
    return exp / "ddp", torchrun(str(ROOT / "train.py"), *ddp_args(tiny_corpus, exp, "ddp"))


def weights(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, weights_only=True)
    return {f"{part}.{k}": v for part in ("model", "head") for k, v in state[part].items()}


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), (a, b)


def losses(run: Path) -> list[tuple[str, str]]:
    return [(r["loss"], r["accuracy"]) for r in csv.DictReader(open(run / "log.csv"))]


def test_two_process_ddp_finishes_when_the_best_epoch_is_not_the_last(ddp_run):
    """The replicas are compared before rank 0 loads best.pt (epoch 1) for the final test, which every rank
    shares; ranks draw disjoint shards; only rank 0 writes the experiment."""
    run, proc = ddp_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 ranks drew disjoint shards of 16 utterances each" in proc.stderr
    assert "all 2 replicas hold identical weights" in proc.stderr
    assert "2 process(es) x batch 4 x accumulate 2" in proc.stderr
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert [r["val_eer"] for r in rows] == ["0.5000"] * 3 and [r["steps"] for r in rows] == ["2"] * 3
    assert json.loads((run / "results.json").read_text())["epoch"] == 1
    assert_same_weights(run / "checkpoints/best.pt", run / "checkpoints/epoch_0001.pt")
    best, last = weights(run / "checkpoints/best.pt"), weights(run / "checkpoints/epoch_0003.pt")
    assert not all(torch.equal(best[k], last[k]) for k in best)  # trained on after its best epoch
    assert len((run / "scores/trials.txt").read_text().splitlines()) == 12


def test_evaluation_shared_over_two_processes_equals_one_process(ddp_run, tmp_path):
    """The DDP run's final test, each rank embedding every other file (cohort included) and rank 0 writing,
    gives the scores and embeddings of inference.py in one process on the same checkpoint."""
    run, proc = ddp_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    # 9 test files, then the cohort: every training utterance (6 speakers x 6, under the default of 10 each)
    assert "9 to embed over 2 ranks" in proc.stderr and "36 to embed over 2 ranks" in proc.stderr
    single = tmp_path / "single"
    shutil.copytree(run, single, ignore=shutil.ignore_patterns("embeddings", "scores", "eval"))
    inference.main(["--checkpoint", str(single), "--threads", "1"])
    for scores in ("trials.txt", "trials.asnorm.txt"):
        assert (single / "scores" / scores).read_text() == (run / "scores" / scores).read_text()
    [one] = (single / "embeddings").glob("best-*")
    [two] = (run / "embeddings").glob("best-*")
    stored = dict(EmbeddingStore(two).entries())
    assert len(stored) == 9 + 36 and sorted(EmbeddingStore(one).entries()) == sorted(stored.items())
    a, b = EmbeddingStore(one).read(stored), EmbeddingStore(two).read(stored)
    assert all(np.array_equal(a[k], b[k]) for k in stored)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(args: list[str], logs: Path) -> list[subprocess.Popen]:
    """Two torchrun agents of one process each, meeting at a c10d rendezvous on localhost, as two machines
    would. Their output goes to logs/node<i>.txt."""
    launch = ["--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}",
              "--rdzv-id=voiceprint-test"]
    return [subprocess.Popen([*LAUNCH, *launch, str(ROOT / "train.py"), *args], cwd=ROOT,
                             env=subprocess_env(OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL,
                             stderr=open(logs / f"node{i}.txt", "w"), text=True) for i in range(2)]


def descendants(pid: int) -> list[int]:
    """The processes started by `pid`, recursively (torchrun starts its workers in sessions of their own)."""
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except OSError:  # the process ended meanwhile
            pass
    return [c for child in children for c in (child, *descendants(child))]


def kill(nodes: list[subprocess.Popen]) -> None:
    """SIGKILL every process of the nodes still running, workers included."""
    for pid in [pid for n in nodes if n.poll() is None for pid in (n.pid, *descendants(n.pid))]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for node in nodes:
        node.wait()


def test_two_nodes_killed_mid_epoch_resume_to_the_uninterrupted_weights(ddp_run, tiny_corpus, tmp_path):
    """Two nodes of one process each run the DDP test's config; every process of both is killed (SIGKILL) once
    epoch 2 has its mid-epoch checkpoint, then both nodes are started again with --resume: the weights equal
    those of the uninterrupted run, which had its 2 processes on one node."""
    run, proc = ddp_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    nodes = two_nodes(ddp_args(tiny_corpus, tmp_path, "nodes"), tmp_path)
    folder = tmp_path / "nodes" / "checkpoints"
    deadline = time.monotonic() + 240
    try:
        while not (folder / "epoch_0002-step_000001.pt").exists() and time.monotonic() < deadline:
            assert all(n.poll() is None for n in nodes), (tmp_path / "node0.txt").read_text()[-3000:]
            time.sleep(0.05)
    finally:
        kill(nodes)
    assert (folder / "epoch_0002-step_000001.pt").exists() and not (folder / "epoch_0003.pt").exists()
    for later in [p for p in folder.glob("epoch_*.pt") if p.name > "epoch_0002-step_000001.pt"]:
        later.unlink()  # killed a little later than that checkpoint: resume from it all the same

    nodes = two_nodes(["--resume", "--exp-dir", str(tmp_path), "--name", "nodes", "--threads", "1"], tmp_path)
    try:
        for i, node in enumerate(nodes):
            assert node.wait(timeout=300) == 0, (tmp_path / f"node{i}.txt").read_text()[-3000:]
    finally:
        kill(nodes)
    assert "after epoch 1, batch 2 of epoch 2" in (tmp_path / "node0.txt").read_text() + (
        tmp_path / "node1.txt").read_text()
    assert_same_weights(run / "checkpoints/epoch_0003.pt", folder / "epoch_0003.pt")
    assert losses(tmp_path / "nodes") == losses(run)
    assert json.loads((tmp_path / "nodes" / "results.json").read_text())["epoch"] == 1
