"""export.py and deploy.py: the ONNX and TorchScript graphs (wave in, embedding out, dynamic axes) reproduce the
checkpoint's embeddings; inference.py --runtime onnx gives the torch path's embeddings (cosine >= 0.9999) and
EER; bad inputs are one-line errors naming the file."""

import json
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

import deploy
import inference
from config import build_config
from data.features import num_samples_for_frames
from embedding import file_sha1
from evaluation import checkpoint_embedder, load_trial_lists
from runs import load_trained
from tests.conftest import subprocess_env
from utils import UserError

ROOT = Path(__file__).resolve().parents[1]
needs_onnx = pytest.mark.skipif(any(__import__("importlib").util.find_spec(m) is None
                                    for m in ("onnx", "onnxscript", "onnxruntime")),
                                reason="the optional ONNX packages (requirements-optional.txt) are not installed")


def run_script(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / args[0]), *args[1:]], cwd=cwd, capture_output=True, text=True,
                          env=subprocess_env(OMP_NUM_THREADS="1"), timeout=180)


def error_line(proc: subprocess.CompletedProcess, script: str) -> str:
    """The one line a script prints for a UserError (exit 2), after any log lines."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip() and " INFO " not in line]
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: "), proc.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def run(trained_run, tmp_path_factory) -> Path:
    """A copy of the trained run's best.pt and training list (exports and reports are written beside them)."""
    run = tmp_path_factory.mktemp("deploy") / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(trained_run / "checkpoints/best.pt", run / "checkpoints/best.pt")
    shutil.copy(trained_run / "train_list.jsonl", run / "train_list.jsonl")
    return run


@pytest.fixture(scope="module")
def onnx_file(run) -> Path:
    """export.py --format onnx with the default output: beside the checkpoint."""
    import export

    path = export.main(["--checkpoint", str(run), "--format", "onnx"])
    assert path == run / "checkpoints/best.onnx"
    return path


@needs_onnx
def test_onnx_export_records_the_run_beside_and_inside_the_file(run, onnx_file):
    ckpt = run / "checkpoints/best.pt"
    trained = load_trained(ckpt)
    record = json.loads((run / "checkpoints/best.onnx.json").read_text())
    assert record["checkpoint_sha1"] == file_sha1(ckpt) and record["file_sha1"] == file_sha1(onnx_file)
    assert record["config"]["channels"] == 16 and record["speakers"] == trained.speakers
    assert [i["name"] for i in record["inputs"]] == ["wave"] and record["inputs"][0]["shape"] == ["batch", "samples"]
    assert record["outputs"][0]["name"] == "embedding" and record["outputs"][0]["shape"] == ["batch", 192]
    assert record["front_end"]["inside_graph"] and record["front_end"]["options"]["num_mel_bins"] == 80
    assert len(record["verified"]) == 4 and all(c["min_cosine"] >= deploy.MIN_COSINE for c in record["verified"])
    inside = deploy.onnx_record(deploy.onnx_session(onnx_file), onnx_file)
    assert inside["checkpoint_sha1"] == record["checkpoint_sha1"] and "file_sha1" not in inside


@needs_onnx
def test_onnx_runtime_embeddings_and_eer_match_torch(run, onnx_file, tiny_corpus):
    """The same evaluation path (evaluation.evaluate through inference.py), torch fp32 vs onnxruntime."""
    common = ["--checkpoint", str(run), "--bootstrap", "0", "--threads", "1"]
    [torch_row] = inference.main([*common, "--precision", "fp32"])
    [onnx_row] = inference.main([*common, "--runtime", "onnx"])
    assert onnx_row.eer == torch_row.eer and onnx_row.min_dcf == torch_row.min_dcf
    assert np.allclose(onnx_row.scores, torch_row.scores, atol=1e-4)
    ckpt = run / "checkpoints/best.pt"
    files = load_trial_lists([str(tiny_corpus / "test/trials.txt")], str(tiny_corpus / "test/wav"))[0].files
    embedders = [checkpoint_embedder(build_config({"precision": "fp32", "runtime": runtime},
                                                  base=asdict(load_trained(ckpt).cfg)), load_trained(ckpt).model, ckpt)
                 for runtime in ("torch", "onnx")]
    assert isinstance(embedders[1], deploy.OnnxEmbedder) and embedders[0].cache_path != embedders[1].cache_path
    a, b = (e.extract(files) for e in embedders)
    cosines = [float(a[k] @ b[k]) for k in files]
    assert min(cosines) >= 0.9999, min(cosines)


@needs_onnx
def test_onnx_file_of_another_checkpoint_or_config_is_refused(run, onnx_file, tmp_path):
    import onnx

    def altered(name: str, change: dict) -> Path:
        model = onnx.load(str(onnx_file))
        [prop] = [p for p in model.metadata_props if p.key == deploy.RECORD_KEY]
        record = json.loads(prop.value)
        for key, value in change.items():
            target = record["config"] if key in record["config"] else record
            target[key] = value
        prop.value = json.dumps(record)
        onnx.save(model, str(tmp_path / name))
        return tmp_path / name

    other_config = altered("n_mels40.onnx", {"n_mels": 40})
    proc = run_script(["inference.py", "--checkpoint", str(run), "--runtime", "onnx", "--onnx-file",
                       str(other_config), "--bootstrap", "0"], tmp_path)
    line = error_line(proc, "inference.py")
    assert str(other_config) in line and "exported with n_mels=40" in line and "export.py --checkpoint" in line
    cfg = build_config({"runtime": "onnx", "onnx_file": str(altered("other.onnx", {"checkpoint_sha1": "0" * 40}))},
                       base=asdict(load_trained(run / "checkpoints/best.pt").cfg))
    with pytest.raises(UserError, match=r"other.onnx: exported from another checkpoint"):
        checkpoint_embedder(cfg, load_trained(run / "checkpoints/best.pt").model, run / "checkpoints/best.pt")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    cfg = build_config({"runtime": "onnx", "onnx_file": str(tmp_path / "junk.onnx")}, base=asdict(cfg))
    with pytest.raises(UserError, match=r"junk.onnx: not a loadable ONNX model"):
        checkpoint_embedder(cfg, load_trained(run / "checkpoints/best.pt").model, run / "checkpoints/best.pt")


def test_torchscript_export_runs_without_the_project(run, tmp_path):
    """The traced graph alone (torch.jit.load in a process without the repository) at lengths and batch sizes
    other than its example's gives the eager model's embeddings."""
    import export

    path = export.main(["--checkpoint", str(run), "--format", "torchscript", "--out", str(tmp_path / "m.ts")])
    assert json.loads((tmp_path / "m.ts.json").read_text())["format"] == "torchscript"
    module = deploy.wave_embedding(load_trained(run / "checkpoints/best.pt"))
    opts = module.frontend.opts
    waves = [np.random.default_rng(n).uniform(-0.3, 0.3, (b, n)).astype(np.float32)
             for b, n in [(1, num_samples_for_frames(1, opts)), (4, 12_345), (2, 71_111)]]
    np.savez(tmp_path / "waves.npz", *waves)
    code = ("import sys, numpy as np, torch; g = torch.jit.load(sys.argv[1]); w = np.load(sys.argv[2]); "
            "np.savez(sys.argv[3], *[g(torch.from_numpy(w[k])).detach().numpy() for k in sorted(w.files)])")
    env = {k: v for k, v in subprocess_env(OMP_NUM_THREADS="1").items() if k != "PYTHONPATH"}
    command = [sys.executable, "-c", code, str(path), str(tmp_path / "waves.npz"), str(tmp_path / "out.npz")]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with np.load(tmp_path / "out.npz") as out, torch.no_grad():
        for i, wave in enumerate(waves):
            expected = module(torch.from_numpy(wave)).numpy()
            assert out[f"arr_{i}"].shape == expected.shape
            np.testing.assert_allclose(out[f"arr_{i}"], expected, atol=1e-4)


def test_export_of_a_bad_checkpoint_or_format_is_one_line(tmp_path, run):
    (tmp_path / "broken.pt").write_bytes(b"\x00" * 100)
    line = error_line(run_script(["export.py", "--checkpoint", str(tmp_path / "broken.pt"), "--format", "onnx"],
                                 tmp_path), "export.py")
    assert f"{tmp_path / 'broken.pt'}: not a readable checkpoint" in line
    line = error_line(run_script(["export.py", "--checkpoint", str(run), "--format", "tflite"], tmp_path),
                      "export.py")
    assert f"{run / 'checkpoints/best.pt'}: cannot export as 'tflite'" in line and "onnx, torchscript" in line
    assert not list(tmp_path.glob("*.tmp")) and not list((run / "checkpoints").glob("*.tflite*"))


def test_missing_onnx_packages_name_the_install_command(monkeypatch, run):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(UserError, match=r"--runtime onnx needs onnxruntime, not installed: pip install onnx"):
        deploy.onnx_session(run / "checkpoints/best.onnx")
