"""hubconf.py and api.py: torch.hub.load(..., source="local") from a user's project that has its own config,
utils, data and models modules; embed a file and an array, verify two files; the API's answers are the
evaluation path's and pair mode's."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from tests.conftest import subprocess_env
from utils import UserError

ROOT = Path(__file__).resolve().parents[1]

USER_SCRIPT = textwrap.dedent("""
    import json, sys
    import config, data, models, utils  # the user's own modules, imported before the hub
    import data.loader
    import numpy as np, soundfile as sf, torch

    checkpoint, file_a, file_b, repo = sys.argv[1:5]
    before = set(sys.modules)
    sv = torch.hub.load(repo, "embedder", checkpoint=checkpoint, source="local", device="cpu", precision="fp32")
    wave, rate = sf.read(file_a, dtype="float32")
    from_file, from_array = sv.embed(file_a), sv.embed(wave, sample_rate=rate)
    result = sv.verify(file_a, file_b)
    mine = [config.WHO, utils.WHO, data.WHO, models.WHO, data.loader.WHO, sys.modules["utils"].WHO]
    project = {"config", "utils", "data", "models", "loss", "runs", "embedding", "evaluation", "api", "inference"}
    leaked = sorted(n for n in set(sys.modules) - before if n.split(".")[0] in project)
    print(json.dumps({"mine": mine, "leaked": leaked, "dim": len(from_file), "norm": float(np.linalg.norm(from_file)),
                      "cosine": float(from_file @ from_array), "score": result.score, "llr": result.llr,
                      "accept": result.accept, "rule": result.rule, "repr": repr(sv)}))
""")


def user_project(root: Path) -> Path:
    """A user's project with modules named like the repository's."""
    for name in ("config.py", "utils.py", "data/__init__.py", "data/loader.py", "models/__init__.py"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"WHO = 'user {name}'\n")
    (root / "main.py").write_text(USER_SCRIPT)
    return root


def test_hub_load_from_a_project_with_its_own_config_utils_data_models(trained_run, tiny_corpus, tmp_path):
    import json

    files = sorted(str(p) for p in (tiny_corpus / "test/wav").rglob("*.wav"))
    project = user_project(tmp_path / "project")
    env = {k: v for k, v in subprocess_env(OMP_NUM_THREADS="1").items() if k != "PYTHONPATH"}  # a user's env
    proc = subprocess.run([sys.executable, "main.py", str(trained_run), files[0], files[1], str(ROOT)], cwd=project,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["mine"] == ["user config.py", "user utils.py", "user data/__init__.py", "user models/__init__.py",
                           "user data/loader.py", "user utils.py"]
    assert out["leaked"] == []  # nothing of the repository under the user's module names
    assert out["dim"] == 192 and out["norm"] == pytest.approx(1.0, abs=1e-5)
    assert out["cosine"] == pytest.approx(1.0, abs=1e-6)  # an array is embedded as its file is
    assert -1.0 <= out["score"] <= 1.0 and out["llr"] is None and out["accept"] is None
    assert "no calibration" in out["rule"] and "SpeakerEmbedder(" in out["repr"]


@pytest.fixture(scope="module")
def embedder(trained_run):
    import api

    return api.SpeakerEmbedder(trained_run, device="cpu", precision="fp32")


def test_api_answers_are_the_evaluation_and_pair_mode_answers(embedder, trained_run, tiny_corpus, tmp_path):
    import inference

    files = sorted(str(p) for p in (tiny_corpus / "test/wav").rglob("*.wav"))
    expected = embedder.embedder.extract({"x": files[2]})["x"]
    np.testing.assert_array_equal(embedder.embed(files[2]), expected)
    result = embedder.verify(files[0], files[2])
    [pair] = inference.main(["--checkpoint", str(trained_run), "--precision", "fp32", "--device", "cpu",
                             "--enroll", files[0], "--test", files[2]])
    assert result.score == pytest.approx(pair.score, abs=1e-6) and result.rule == pair.decision.rule
    wave, rate = sf.read(files[2], dtype="float32")
    upsampled = resample_poly(wave, 2, 1).astype(np.float32)  # at twice the model's rate: resampled like a file
    sf.write(tmp_path / "32k.wav", upsampled, 2 * rate, subtype="FLOAT")
    from_array = embedder.embed(upsampled, sample_rate=2 * rate)
    np.testing.assert_array_equal(from_array, embedder.embed(str(tmp_path / "32k.wav")))
    assert float(from_array @ expected) > 0.99


def test_api_bad_inputs_are_user_errors(embedder, tiny_corpus):
    import api

    files = sorted(str(p) for p in (tiny_corpus / "test/wav").rglob("*.wav"))
    with pytest.raises(UserError, match=r"expected a mono array of shape \(N,\), got \(2, 100\)"):
        embedder.embed(np.zeros((2, 100), dtype=np.float32))
    with pytest.raises(UserError, match=r"sample_rate is for waveform arrays"):
        embedder.embed(files[0], sample_rate=16000)
    with pytest.raises(UserError, match=r"empty"):
        embedder.embed(np.zeros(0, dtype=np.float32))
    with pytest.raises(UserError, match=r"waveform: sample rate 8000 Hz is below the 16000 Hz"):
        embedder.embed(np.zeros(8000, dtype=np.float32), sample_rate=8000)
    with pytest.raises(UserError, match=r"lr: not a setting of the embedder"):
        api.SpeakerEmbedder(embedder.checkpoint, lr=0.1)
    with pytest.raises(UserError, match=r"n_mels: .* was trained with 80, not 40"):
        api.SpeakerEmbedder(embedder.checkpoint, n_mels=40)
