"""CUDA paths: training under each precision policy, and embeddings that match the CPU's. Skipped without a GPU
(CI has none); run on a lent GPU before a release."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from data.corpus import load_index
from data.features import frontend_from_config
from embedding import Embedder
from runs import load_trained
from tests.conftest import subprocess_env, tiny_train_args

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize(("precision", "compile_"), [("fp32", "off"), ("bf16", "on"), ("fp16", "off")])
def test_training_on_cuda(tiny_corpus, tmp_path, precision, compile_):
    """Each precision trains and checkpoints; the bf16 run with the model compiled (inductor on CUDA)."""
    args = tiny_train_args(tiny_corpus, tmp_path, precision, "--device", "cuda", "--precision", precision,
                           "--compile", compile_)
    exp = train.main(args)
    state = torch.load(exp / "checkpoints" / "epoch_0002.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert ("scaler" in state) == (precision == "fp16")  # fp16 trains with a grad scaler, saved for resume
    assert 0 <= json.loads((exp / "results.json").read_text())["results"][0]["eer"] <= 1


def test_cuda_embeddings_match_cpu(tiny_corpus, tmp_path):
    exp = train.main(tiny_train_args(tiny_corpus, tmp_path, "run", "--device", "cpu", "--epochs", "1"))
    trained = load_trained(exp / "checkpoints" / "best.pt")
    paths = {u.key: u.path for u in load_index(str(tiny_corpus / "test/wav"), trained.cfg.sample_rate)}
    frontend = frontend_from_config(trained.cfg)
    emb = {}
    for device in ("cpu", "cuda"):
        model = trained.model.to(device).eval()
        embedder = Embedder(model, frontend.to(device), torch.device(device), "fp32")  # no cache: both extract
        emb[device] = embedder.extract(paths)
    for key in paths:
        a, b = emb["cpu"][key], emb["cuda"][key]
        assert np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) > 0.999


def test_nccl_ddp_single_gpu(tiny_corpus, tmp_path):
    """torchrun with one process per GPU and nccl (one GPU here: the process group, DDP wrapping, the shard
    and replica checks, the mid-epoch checkpoint and the shared validation and test all run through nccl)."""
    root = Path(__file__).resolve().parents[1]
    count = torch.cuda.device_count()
    args = tiny_train_args(tiny_corpus, tmp_path, "ddp", "--epochs", "1", "--batch-size", "4", "--device", "cuda",
                           "--compile", "off", "--checkpoint-every", "2")  # a mid-epoch gather of running totals
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={count}",
                           "--standalone", str(root / "train.py"), *args], cwd=root,
                          env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"all {count} replicas hold identical weights" in proc.stderr
    assert (tmp_path / "ddp" / "results.json").is_file()
