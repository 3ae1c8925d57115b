"""config `compile`: the auto policy is a pure function of measured numbers; a compiled forward runs only in
its mode and falls back to eager, with one log line, when torch.compile fails; compile=off trains exactly as
before; a compiled run's checkpoints hold the plain module's keys. (Real compiles take minutes on the CPU:
the run below traces with dynamo and AOTAutograd but the "aot_eager" backend, not inductor's codegen.)"""

import functools
import logging
import types

import pytest
import torch
from torch import nn

import train
from config import Config
from data.features import frontend_from_config
from embedding import CompiledForward, Embedder, compile_forward, compile_pays, compiled
from models.ecapa_tdnn import EcapaTdnn
from runs import load_checkpoint, load_trained
from tests.conftest import tiny_train_args


def small() -> nn.Module:
    torch.manual_seed(0)
    return EcapaTdnn(20, channels=16, embed_dim=8, mfa_channels=48, se_bottleneck=8, attention_channels=8)


@pytest.mark.parametrize("steps, step_seconds, expected", [
    (336, 1.2, False),  # the demo corpus's 6 epochs x 56 batches: 77 s saved < 90 s to compile
    (2000, 1.2, True),  # 456 s saved
    (1_000_000, 0.001, True),  # 190 s saved
    (10, 0.001, False),  # a tiny test run
])
def test_compile_pays_when_the_saving_exceeds_the_compile(steps, step_seconds, expected):
    assert compile_pays(steps, step_seconds, compile_seconds=90.0, compiled_ratio=0.81) is expected
    assert not compile_pays(10**9, 1.0, compile_seconds=1.0, compiled_ratio=1.0)  # no gain: never


def test_a_compiled_forward_runs_in_its_own_mode_only(monkeypatch):
    calls = []

    def fake_compile(fn, dynamic=None):
        return lambda *a: calls.append(dynamic) or fn(*a)

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = small()
    keys = list(model.state_dict())
    assert compile_forward(model, training=True, dynamic=False) is model.forward and compiled(model)
    x = torch.randn(2, 60, 20)
    model.train()(x)
    model.eval()(x)  # validation: eager
    assert calls == [False]
    assert list(model.state_dict()) == keys  # no `_orig_mod.` prefix, no new module


def test_a_failing_compile_falls_back_to_eager_with_one_log_line(monkeypatch, caplog):
    def broken(fn, dynamic=None):
        def call(*a):
            raise RuntimeError("InductorError: no working C++ compiler found\nmore detail")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    model = small().eval()
    x = torch.randn(2, 60, 20)
    with torch.no_grad():
        expected = model(x)
        compile_forward(model, training=False, dynamic=True)
        with caplog.at_level(logging.WARNING, logger="voiceprint"):
            torch.testing.assert_close(model(x), expected)
            torch.testing.assert_close(model(x), expected)
    assert [r.getMessage() for r in caplog.records] == [
        "torch.compile failed (RuntimeError: InductorError: no working C++ compiler found); running eager"]
    assert isinstance(model.forward, CompiledForward) and not compiled(model)


def test_torch_compile_unavailable_leaves_the_module_eager(monkeypatch, caplog):
    def unavailable(fn, dynamic=None):
        raise RuntimeError("Dynamo is not supported on this Python")

    monkeypatch.setattr(torch, "compile", unavailable)
    model = small()
    with caplog.at_level(logging.WARNING, logger="voiceprint"):
        assert compile_forward(model, training=True, dynamic=False) is None
    assert "forward" not in vars(model) and len(caplog.records) == 1


@pytest.mark.parametrize("epochs, batches, expected", [(6, 56, False), (80, 16_000, True)])
def test_compile_auto_on_cuda_times_the_eager_step(monkeypatch, caplog, epochs, batches, expected):
    """On CUDA auto times the eager step (the best of 3 probe steps after a warm-up) and compiles only a run long
    enough to repay CUDA's compile: not the demo's 6 x 56 steps of 20 ms, yes VoxCeleb2's epochs."""
    probes, compiles = [], []
    monkeypatch.setattr(train, "probe_step", lambda t: probes.append(t) or 0.02)
    monkeypatch.setattr(train, "compile_forward", lambda model, training, dynamic: compiles.append(model))
    t = types.SimpleNamespace(cfg=Config(compile="auto", epochs=epochs), trainee=types.SimpleNamespace(model="m"),
                              loader=types.SimpleNamespace(batch_sampler=range(batches)), start_epoch=0,
                              start_batch=0, device=torch.device("cuda"), d=types.SimpleNamespace(main=True,
                                                                                                  distributed=False))
    with caplog.at_level(logging.INFO, logger="voiceprint"):
        train.compile_for_training(t)
    assert len(probes) == 4 and compiles == (["m"] if expected else [])
    assert f"compile auto: {epochs * batches} batches x ~0.020 s eager" in caplog.text


@pytest.mark.parametrize("setting, device, audio_hours, expected", [
    ("off", "cpu", 10_000, False), ("on", "cpu", 0.001, True), ("auto", "cpu", 1, False), ("auto", "cpu", 1000, True),
    ("auto", "cuda", 1, False), ("auto", "cuda", 10_000, True)])
def test_extraction_compiles_as_its_policy_says(monkeypatch, setting, device, audio_hours, expected):
    monkeypatch.setattr(torch, "compile", lambda fn, dynamic=None: fn)
    embedder = Embedder(small(), frontend_from_config(Config()), torch.device(device), "fp32", compile=setting)
    embedder.maybe_compile(3600.0 * audio_hours)
    assert compiled(embedder.model) is expected
    if expected:
        assert embedder.model.forward.training is False  # extraction's eval-mode forward


def test_compile_off_and_auto_on_a_tiny_run_train_the_same_weights(tiny_corpus, tmp_path, caplog):
    """auto times two eager probe steps (which must leave no trace) and, for a tiny run, stays eager."""
    states = {}
    for setting in ("off", "auto"):
        with caplog.at_level(logging.INFO, logger="voiceprint"):
            run = train.main(tiny_train_args(tiny_corpus, tmp_path, setting, "--epochs", "1", "--val-trials", "",
                                             "--compile", setting))
        states[setting] = load_checkpoint(run / "checkpoints/best.pt")["model"]
    assert "compile auto:" in caplog.text and ": eager" in caplog.text
    assert states["off"].keys() == states["auto"].keys()
    for key, value in states["off"].items():
        assert torch.equal(value, states["auto"][key]), key


def test_a_compiled_run_saves_and_averages_plain_keys(tiny_corpus, tmp_path, monkeypatch, caplog):
    """--compile on, traced by dynamo (backend "eager": the graph capture without inductor's minutes); the
    validation and the final test run the same model in eval mode."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    args = tiny_train_args(tiny_corpus, tmp_path, "compiled", "--compile", "on", "--epochs", "1",
                           "--average-last", "1")
    with caplog.at_level(logging.INFO, logger="voiceprint"):
        run = train.main(args)
    assert "torch.compile: the training step compiled" in caplog.text
    assert "torch.compile failed" not in caplog.text
    expected = set(load_trained(run / "checkpoints/best.pt").model.state_dict())  # the plain module's keys
    for name in ("best.pt", "epoch_0001.pt", "avg_last_1.pt"):
        assert set(load_checkpoint(run / "checkpoints" / name)["model"]) == expected, name
    assert not any("_orig_mod" in k for k in expected)
