"""A small Python API over a trained run: embed audio, verify two inputs. torch.hub's entry point
(hubconf.py) returns it; from this folder it is also `api.SpeakerEmbedder(checkpoint)`.

    import torch
    sv = torch.hub.load("/path/to/voiceprint", "embedder", checkpoint="exp/NAME", source="local")
    e = sv.embed("a.wav")                         # (D,) float32, L2-normalised
    e = sv.embed(wave, sample_rate=16000)         # a mono numpy array or torch tensor (N,)
    r = sv.verify("a.wav", "b.wav")               # r.score, r.llr, r.accept, r.rule

Everything goes through the project's own paths, so the numbers are those `inference.py` gives: the
checkpoint's config and front end (runs.load_trained), its embedder (evaluation.checkpoint_embedder, with the
extraction settings of the run: full length by default), and for `verify` inference.py's pair mode
(`pair_results`: the first score_norm's score, the calibration in <run>/eval/calibration.json when one was
fitted to scores like these, the decision_threshold rule). An array is written to a temporary float32 WAV
file at its sample rate and read back like any file (the same resampling, padding and batching; lossless).
Keyword settings are the Config fields inference.py takes (`eval_crops=10`, `score_norm=["asnorm"]`,
`runtime="onnx"`, ...); a field that would change the trained model is an error, as on the command line.
Problems raise utils.UserError with a one-line message naming the input.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from config import SCOPES, Config, ConfigError, build_config, check_model_keys
from evaluation import checkpoint_embedder
from inference import pair_results
from runs import find_checkpoint, load_trained
from utils import UserError

Audio = str | Path | np.ndarray | torch.Tensor  # a file path, or a mono waveform (N,) in [-1, 1]


@dataclass(frozen=True)
class Verification:
    score: float  # cosine score of b against a, under the run's first score_norm
    llr: float | None  # calibrated log-likelihood ratio (natural log); None without a matching calibration
    accept: bool | None  # same speaker? by the decision_threshold rule; None without a calibration
    rule: str  # the decision and its rule in words, or why there is none


class SpeakerEmbedder:
    """A trained checkpoint ready to embed and verify (module docstring). `checkpoint`: a checkpoint file or a
    run folder (its best.pt), relative to the current directory."""

    def __init__(self, checkpoint: str | Path, *, device: str = "auto", precision: str = "auto", **settings: object):
        overrides = {"checkpoint": str(checkpoint), "device": device, "precision": precision, **settings}
        for key in overrides:
            if key not in SCOPES["inference.py"]:
                raise ConfigError(f"{key}: not a setting of the embedder (the Config fields inference.py takes)")
        defaults = build_config(overrides)
        self.checkpoint = find_checkpoint(defaults.checkpoint, defaults.exp_dir)
        trained = load_trained(self.checkpoint)
        check_model_keys(overrides, trained.cfg, self.checkpoint)
        self.cfg: Config = build_config(overrides, base={**dataclasses.asdict(trained.cfg),
                                                         "checkpoint": str(self.checkpoint)})
        if "threads" in settings:  # only when asked: the run's own setting would change the caller's process
            torch.set_num_threads(self.cfg.threads)
        self.speakers: list[str] = trained.speakers  # the training speakers, in the head's class order
        self.embedder = checkpoint_embedder(self.cfg, trained.model, self.checkpoint)

    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    @property
    def embed_dim(self) -> int:
        return int(self.embedder.model.embed_dim)

    def __repr__(self) -> str:
        return (f"SpeakerEmbedder({self.checkpoint}: {self.cfg.model}, {self.embed_dim}-d, {self.sample_rate} Hz, "
                f"{self.cfg.runtime} on {self.embedder.device} {self.embedder.precision}; "
                f"{self.embedder.extraction.describe()})")

    def embed(self, audio: Audio, sample_rate: int | None = None) -> np.ndarray:
        """The (D,) L2-normalised float32 embedding of a file or a waveform (at `sample_rate`, default the
        model's; a higher rate is resampled, a lower one refused, as for files)."""
        with self._files([audio], sample_rate) as [path]:
            return self.embedder.extract({"input": path})["input"]

    def verify(self, a: Audio, b: Audio, sample_rate: int | None = None) -> Verification:
        """Is `b` spoken by the speaker of `a`? Score, calibrated LLR and decision (inference.py's pair mode)."""
        with self._files([a, b], sample_rate) as (path_a, path_b):
            [result], _ = pair_results(self.cfg, self.checkpoint, self.embedder, [path_a], [path_b])
        d = result.decision
        return Verification(result.score, d.llr, d.accept, d.rule)

    @contextlib.contextmanager
    def _files(self, inputs: Sequence[Audio], sample_rate: int | None) -> Iterator[list[str]]:
        """Paths of the inputs: a file as it is, an array written to a temporary WAV file."""
        with tempfile.TemporaryDirectory(prefix="voiceprint-") as folder:
            yield [self._file(audio, sample_rate, Path(folder) / f"input{i}.wav") for i, audio in enumerate(inputs)]

    def _file(self, audio: Audio, sample_rate: int | None, path: Path) -> str:
        if isinstance(audio, (str, Path)):
            if sample_rate is not None:
                raise UserError(f"{audio}: sample_rate is for waveform arrays; a file carries its own rate")
            return str(audio)
        rate = sample_rate or self.sample_rate
        if rate < self.sample_rate:  # checked here too, to name the array rather than its temporary file
            raise UserError(f"waveform: sample rate {rate} Hz is below the {self.sample_rate} Hz the model works at "
                            f"(upsampling adds no information)")
        sf.write(str(path), mono_wave(audio), rate, subtype="FLOAT")
        return str(path)


def mono_wave(audio: np.ndarray | torch.Tensor) -> np.ndarray:
    """A mono float32 waveform (N,) in [-1, 1] from a float array (or int16 samples, scaled by 1/32768)."""
    wave = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    if wave.ndim != 1:
        raise UserError(f"waveform: expected a mono array of shape (N,), got {wave.shape}; pick one channel")
    if wave.dtype == np.int16:
        wave = wave / 32768.0
    elif not np.issubdtype(wave.dtype, np.floating):
        raise UserError(f"waveform: expected float samples in [-1, 1] (or int16), got dtype {wave.dtype}")
    if wave.size == 0 or not np.isfinite(wave).all():
        raise UserError(f"waveform: {'empty' if wave.size == 0 else 'holds NaN or infinite samples'}")
    return wave.astype(np.float32)
