"""The speed work changes no behaviour: the faster formulations give the reference values, the bf16 and
channels_last paths stay finite, the precision policy picks what it says, and a model is never compiled when built.
(No timings here: bench/bench_speed.py measures them.)"""

import argparse
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import utils
from bench.bench_speed import Table, Timed, UtilisationSampler, epoch_worker, train_worker
from config import Config
from loss import build_head
from models import build_model
from models.ecapa_tdnn import EcapaTdnn
from models.pooling import AttentiveStatsPooling, mean_and_variance
from models.resnet import ResNet
from tests.conftest import subprocess_env, tiny_train_args
from utils import UserError, autocast, resolve_precision

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[1]


class ReferencePooling(AttentiveStatsPooling):
    """The literal ECAPA-TDNN attentive statistics pooling (eq. 7-9), all in float32: attention over the
    per-frame concatenation [h_t; mean; std], torch.var_mean for the global statistics."""

    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            var, mean = torch.var_mean(x, dim=-1, keepdim=True, correction=0)
            context = torch.cat((x, mean.expand_as(x), var.clamp(min=1e-5).sqrt().expand_as(x)), dim=1)
            hidden = torch.tanh(self.attention_norm(F.relu(self.attention_in(context))))
            weights = torch.softmax(self.attention_out(hidden), dim=-1)
            mu = (weights * x).sum(-1)
            sigma = ((weights * x * x).sum(-1) - mu * mu).clamp(min=1e-5).sqrt()
            return torch.cat((mu, sigma), dim=1)


def pools(channels: int = 24, attention: int = 8) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    fast = AttentiveStatsPooling(channels, attention)
    reference = ReferencePooling(channels, attention)
    reference.load_state_dict(fast.state_dict())
    return fast, reference


def test_mean_and_variance_equals_var_mean():
    x = 3.0 + torch.randn(2, 5, 4, 37, dtype=torch.float64)
    var, mean = torch.var_mean(x, dim=-1, correction=0)
    got_mean, got_var = mean_and_variance(x)
    torch.testing.assert_close(got_mean, mean)
    torch.testing.assert_close(got_var, var)
    got_mean, got_var = mean_and_variance(x, keepdim=True)
    assert got_mean.shape == got_var.shape == (2, 5, 4, 1)


def test_attentive_pooling_equals_the_reference_forward_and_backward():
    fast, reference = pools()
    x = torch.relu(torch.randn(3, 24, 40)).requires_grad_()
    outputs, grads = [], []
    for pool in (fast, reference):
        pool.train()
        out = pool(x)
        (out * torch.linspace(-1, 1, out.shape[1])).sum().backward()
        outputs.append(out.detach())
        grads.append([x.grad.clone(), *(p.grad.clone() for p in pool.parameters())])
        x.grad = None
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
    for got, expected in zip(*grads):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_attentive_pooling_scores_follow_autocast_and_statistics_stay_float32():
    fast, reference = pools()
    fast.eval(), reference.eval()
    seen = {}
    fast.attention_out.register_forward_hook(lambda module, args, out: seen.update(dtype=out.dtype))
    x = torch.relu(torch.randn(2, 24, 50))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast(x.bfloat16())
    assert seen["dtype"] == torch.bfloat16  # the scores: the autocast dtype
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    with torch.no_grad():
        expected = reference(x.bfloat16().float())
    assert F.cosine_similarity(out, expected, dim=1).min() > 0.999


def test_ecapa_with_the_fast_pooling_equals_the_reference_network():
    torch.manual_seed(0)
    model = small("ecapa_tdnn").eval()
    reference = small("ecapa_tdnn")
    reference.pool = ReferencePooling(48, 8)
    reference.load_state_dict(model.state_dict())
    reference.eval()
    x = torch.randn(2, 120, 20)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)


def small(name: str) -> nn.Module:
    if name == "ecapa_tdnn":
        return EcapaTdnn(20, channels=16, embed_dim=8, mfa_channels=48, se_bottleneck=8, attention_channels=8)
    return ResNet(20, (1, 1, 1, 1), channels=4, embed_dim=8)


@pytest.mark.parametrize("name", ["ecapa_tdnn", "resnet"])
def test_bf16_training_step_is_finite_with_float32_gradients(name):
    torch.manual_seed(0)
    model = small(name).train()
    head = build_head("aam", embed_dim=model.embed_dim, num_speakers=10, margin=0.2, scale=30.0)
    optimizer = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=1e-3, fused=True)
    with autocast(CPU, "bf16"):
        loss, logits = head(model(torch.randn(4, 60, 20)), torch.arange(4))
    loss.backward()
    optimizer.step()
    assert loss.dtype == logits.dtype == torch.float32 and torch.isfinite(loss)
    for p in model.parameters():
        assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
        assert torch.isfinite(p).all()


def test_resnet_is_channels_last_and_equals_its_nchw_copy():
    torch.manual_seed(0)
    model = ResNet(16, (1, 1, 1, 1), channels=8, embed_dim=16).eval()
    convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    nchw = ResNet(16, (1, 1, 1, 1), channels=8, embed_dim=16).to(memory_format=torch.contiguous_format).eval()
    nchw.load_state_dict(model.state_dict())
    assert not nchw.stages[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 40, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), nchw(x), rtol=1e-4, atol=1e-5)
    reloaded = ResNet(16, (1, 1, 1, 1), channels=8, embed_dim=16)
    reloaded.load_state_dict(nchw.state_dict())  # an NCHW checkpoint loads into the channels_last model
    assert reloaded.stages[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)


# --- precision policy ------------------------------------------------------------------------------------

@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_precision_on_cpu_is_bf16_only_with_native_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(utils, "cpu_has_native_bf16", lambda: native)
    assert resolve_precision("auto", CPU) == expected


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp16")])
def test_auto_precision_on_cuda_is_bf16_only_where_native(monkeypatch, native, expected):
    monkeypatch.setattr(utils, "cuda_has_native_bf16", lambda device: native)
    assert resolve_precision("auto", torch.device("cuda")) == expected


@pytest.mark.parametrize("major, expected", [(7, False), (8, True), (9, True)])
def test_emulated_cuda_bf16_does_not_count_as_native(monkeypatch, major, expected):
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace(major=major))
    assert utils.cuda_has_native_bf16(torch.device("cuda")) is expected


def test_auto_precision_elsewhere_is_fp32_and_explicit_choices_are_checked():
    assert resolve_precision("auto", torch.device("meta")) == "fp32"
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"
    with pytest.raises(UserError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", CPU)
    with pytest.raises(UserError, match="unknown precision 'fp8'"):
        resolve_precision("fp8", CPU)


def test_autocast_contexts():
    with autocast(CPU, "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(CPU, "bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_torch_compile_is_a_run_decision_not_a_model_one():
    """Building a model never compiles it: train.py and the embedder decide (config `compile`, auto by default,
    which on a CPU compiles only a run long enough to repay the minutes it takes: tests/test_compile.py)."""
    assert Config().compile == "auto"
    for name in ("ecapa_tdnn", "resnet18"):
        model = build_model(name, n_mels=20, channels=8)
        assert model._compiled_call_impl is None and "forward" not in vars(model)


# --- the benchmark's plumbing ----------------------------------------------------------------------------

def test_bench_worker_times_every_configuration():
    args = argparse.Namespace(models=["resnet18"], configs=["fp32:loop", "bf16:fused"], malloc="tuned", threads=1,
                              seed=0, speakers=10, batch_size=1, steps=1)
    result = train_worker(args)
    assert set(result["times"]) == set(result["flops"]) == {"fp32:loop", "bf16:fused"}
    assert all(len(t) == 1 and min(t) > 0 for t in result["times"].values())
    assert all(f > 0 for f in result["flops"].values()) and set(result["gemm"]) == {"fp32", "bf16"}
    table = Table()
    table.step("train step", "resnet18", "bf16:fused", "configure_malloc", result, "2.00x", "")
    lines = table.markdown().splitlines()
    assert len(lines) == 3 and all(line.count("|") == len(Table.HEADER) + 1 for line in lines)


def test_bench_epoch_worker_runs_train_pys_epoch_and_times_its_parts(tiny_corpus, tmp_path):
    """The epoch rows' subprocess side, in process on the tiny corpus: two epochs of run_epoch with each one's
    parts timed, the model-only steps on the trainer's device; no GPU utilisation on a CPU."""
    flags = tiny_train_args(tiny_corpus, tmp_path, "unused")
    flags = flags[:flags.index("--exp-dir")] + flags[flags.index("--name") + 2:]  # the worker names the run
    flags = [f for f in flags if f not in ("--train-data", str(tiny_corpus / "train/wav"))]
    args = argparse.Namespace(epoch_dir=str(tmp_path / "exp"), epoch_corpus=str(tiny_corpus / "train/wav"),
                              threads=1, steps=1, epoch_flags=" ".join(flags + ["--compile", "off"]), epoch_count=2)
    result = epoch_worker(args)
    assert result["device"] == "cpu" and result["gpu_utilisation_each"] == [None, None] and result["batch_size"] == 8
    assert result["batches"] > 0 and len(result["model_steps"]) == 2 and min(result["model_steps"]) > 0
    assert len(result["epochs"]) == len(result["parts_each"]) == 2 and not result["compiled"]
    assert result["parts"] == result["parts_each"][0] and result["epoch"] == result["epochs"][0]
    for parts, seconds in zip(result["parts_each"], result["epochs"]):
        assert {"train_epoch", "forward_backward", "optimizer_step", "validate", "save_checkpoint",
                "forward"} <= set(parts)
        assert 0 < parts["forward_backward"] + parts["optimizer_step"] <= parts["train_epoch"] <= seconds


def test_timed_waits_for_the_device_around_its_part():
    calls, totals = [], {}
    owner = types.SimpleNamespace(work=lambda: calls.append("work") or 7)
    Timed(owner, "work", totals, sync=lambda: calls.append("sync"))
    assert owner.work() == 7 and calls == ["sync", "work", "sync"] and totals["work"] >= 0


def test_utilisation_sampler_averages_what_it_reads():
    readings = iter(["40%", "n/a", "60%"] + ["50%"] * 1000)
    with UtilisationSampler(every=0.01, read=lambda: next(readings)) as sampler:
        time.sleep(0.1)
    assert sampler.readings[:2] == [40.0, 60.0] and 40.0 <= sampler.mean <= 60.0
    with UtilisationSampler(every=0.01, read=lambda: "n/a") as nothing:
        time.sleep(0.05)
    assert nothing.mean is None


@pytest.mark.parametrize("flags, message", [
    (["--gpu-epochs", "0"], "--gpu-epochs: must be at least 1, got 0"),
    (["--gpu-workers", "-1"], "--gpu-batches must be at least 1 and --gpu-workers at least 0"),
    (["--gpu-batches", "x"], "argument --gpu-batches: invalid int value: 'x'"),
] + ([] if torch.cuda.is_available() else [(["--cuda-only"], "--cuda-only: CUDA is not available here")]))
def test_bench_speed_bad_flags_are_one_line_errors(tmp_path, flags, message):
    proc = subprocess.run([sys.executable, "-m", "bench.bench_speed", *flags], cwd=ROOT, capture_output=True,
                          text=True, env=subprocess_env(), timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [f"bench_speed.py: error: {message}"]


@pytest.mark.parametrize("args", [[], ["out", "5m"], ["out", "60", "extra"]])
def test_gpu_check_usage_errors_exit_2_before_doing_anything(tmp_path, args):
    proc = subprocess.run(["bash", str(ROOT / "bench/gpu_check.sh"), *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith("usage: bash bench/gpu_check.sh OUT_DIR [SECONDS]") and not any(tmp_path.iterdir())
