"""A trained checkpoint as one self-contained graph (ONNX or TorchScript), and extraction with ONNX Runtime
through the project's one evaluation path.

The graph (`WaveEmbedding`): wave (B, N) float32, mono, in [-1, 1], at the run's sample rate -> embedding (B, D)
float32. The front end is inside it: data/features.py's Kaldi fbank and CMN in eval mode (no dither, no
SpecAugment), then the network in eval mode (BatchNorm with its running statistics). Both axes are dynamic.
The embedding is the network's raw output: L2-normalise it and score with the cosine, as evaluation.py does.
The graph needs N >= one frame (frame_length samples, 400 at 16 kHz); the project wrap-pads a file shorter than
MIN_EVAL_FRAMES frames to that length (the wave repeated) before embedding it, and so should a consumer who
wants the project's embeddings.

- ONNX: torch.onnx.export's dynamo exporter (torch.export, then onnxscript's translation of every aten op,
  torch.fft.rfft included), opset 18. Needs the optional packages of requirements-optional.txt.
- TorchScript: torch.jit.trace. torch.jit.script does not compile these modules (ECAPA-TDNN's zip over a
  ModuleList, module-level float constants, the FbankOptions dataclass and autocast contexts in the front end)
  and TorchScript is in maintenance in torch 2.x, so the graph is traced instead. A trace records the branches
  taken for its example; the ones here only concern waves shorter than one frame (an error in eager mode), and
  every shape is traced symbolically -- `verify` proves it on the written file at several batch sizes and
  lengths before the export is kept.

Both files carry the export record (config, speaker list, checkpoint sha1, input and output names and shapes,
the front end's options) inside them (ONNX metadata_props "voiceprint"; TorchScript extra file
"voiceprint.json") and in a JSON file beside them (<file>.json). `inference.py --runtime onnx` checks the
record against the checkpoint it evaluates: another checkpoint's export is an error, not other embeddings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from config import MODEL_KEYS, Config, to_dict
from data.features import FbankOptions, FrontEnd, frontend_from_config, num_samples_for_frames
from embedding import MIN_EVAL_FRAMES, Embedder, file_sha1
from runs import Trained
from scoring import l2_normalise
from utils import UserError, atomic_path, atomic_write_text

log = logging.getLogger("voiceprint")

ONNX_INSTALL = "pip install onnx onnxscript onnxruntime (or: pip install -r requirements-optional.txt)"
OPSET = 18
INPUT, OUTPUT = "wave", "embedding"  # the graph's input and output names
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript"}  # not .pt: run folders are found by their *.pt files
MIN_COSINE = 0.9999  # the exported graph must reproduce the eager model's embeddings at least this closely
RECORD_KEY = "voiceprint"  # ONNX metadata_props key / TorchScript extra file stem of the export record


class WaveEmbedding(nn.Module):
    """The exported graph: the checkpoint's front end and network, wave (B, N) -> raw embedding (B, D)."""

    def __init__(self, frontend: FrontEnd, model: nn.Module):
        super().__init__()
        self.frontend = frontend
        self.model = model

    def forward(self, wave: Tensor) -> Tensor:  # wave: (B, N) float32 in [-1, 1]
        return self.model(self.frontend(wave))  # (B, T, F) -> (B, D)


def wave_embedding(trained: Trained) -> WaveEmbedding:
    """The checkpoint's graph on the CPU in float32 and eval mode."""
    return WaveEmbedding(frontend_from_config(trained.cfg), trained.model).float().cpu().eval()


def verification_shapes(opts: FbankOptions) -> list[tuple[int, int]]:
    """(batch, samples) the export is checked at: one frame, the shortest file the project embeds (plus an odd
    remainder), an odd ~3.7 s and ~10 s, so every axis differs from the export's example (2 x 3 s)."""
    rate = opts.sample_rate
    return [(1, num_samples_for_frames(1, opts)), (2, num_samples_for_frames(MIN_EVAL_FRAMES, opts) + 7),
            (3, int(3.7 * rate) + 11), (1, 10 * rate + 123)]


# --- the optional packages --------------------------------------------------------------------------------

def require_onnx(what: str, packages: tuple[str, ...] = ("onnx", "onnxscript", "onnxruntime")) -> None:
    """torch.onnx.export (dynamo) needs onnx and onnxscript, and the check of its file onnxruntime; running a
    file needs onnxruntime only."""
    import importlib.util

    missing = [name for name in packages if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"{what} needs {', '.join(missing)}, not installed: {ONNX_INSTALL}")


# --- writing an export -------------------------------------------------------------------------------------

def export_record(trained: Trained, checkpoint: Path, fmt: str) -> dict[str, object]:
    """What a consumer of the file needs, and what inference.py checks it against."""
    cfg, opts = trained.cfg, frontend_from_config(trained.cfg).opts
    return {
        "format": fmt, "checkpoint": str(checkpoint), "checkpoint_sha1": file_sha1(checkpoint),
        "epoch": trained.epoch, "model": cfg.model, "embed_dim": int(trained.model.embed_dim),
        "inputs": [{"name": INPUT, "shape": ["batch", "samples"], "dtype": "float32",
                    "meaning": f"mono waveform in [-1, 1] at {cfg.sample_rate} Hz; samples >= "
                               f"{num_samples_for_frames(1, opts)} (one frame)"}],
        "outputs": [{"name": OUTPUT, "shape": ["batch", int(trained.model.embed_dim)], "dtype": "float32",
                     "meaning": "raw speaker embedding: L2-normalise, then score pairs by the cosine"}],
        "front_end": {"inside_graph": True, "fbank": "Kaldi compute-fbank-feats (data/features.py) of the wave "
                      "scaled to int16 units; then CMN (per utterance mean over time) when cmn; no dither, "
                      "no SpecAugment", "options": dataclasses.asdict(opts), "cmn": cfg.cmn,
                      "pad_short_to_samples": num_samples_for_frames(MIN_EVAL_FRAMES, opts),
                      "pad_rule": f"the project wrap-pads (repeats) a wave shorter than {MIN_EVAL_FRAMES} frames to "
                                  "pad_short_to_samples before embedding it"},
        "sample_rate": cfg.sample_rate, "config": to_dict(cfg), "speakers": trained.speakers,
        "torch": torch.__version__,
    }


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """The exporter's chatter off for the export only: onnxscript's and onnx_ir's per-pass INFO lines, torch.onnx's
    "torchvision is not installed" warnings and torch.export's deprecation FutureWarnings."""
    loggers = {name: logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx")}
    levels = {name: logger.level for name, logger in loggers.items()}
    for logger in loggers.values():
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            yield
    finally:
        for name, logger in loggers.items():
            logger.setLevel(levels[name])


def export_onnx(module: WaveEmbedding, example: Tensor, path: Path, record: dict[str, object]) -> None:
    require_onnx("--format onnx")
    one_frame = num_samples_for_frames(1, module.frontend.opts)
    batch, samples = torch.export.Dim("batch"), torch.export.Dim("samples", min=one_frame)
    with torch.no_grad(), quiet_exporter():
        program = torch.onnx.export(module, (example,), dynamo=True, input_names=[INPUT], output_names=[OUTPUT],
                                    dynamic_shapes={INPUT: {0: batch, 1: samples}}, opset_version=OPSET,
                                    verbose=False)
    program.model.metadata_props[RECORD_KEY] = json.dumps(record)
    with atomic_path(path) as tmp:
        program.save(tmp, external_data=False)
        verify(onnx_runner(tmp), module, record, path)


def export_torchscript(module: WaveEmbedding, example: Tensor, path: Path, record: dict[str, object]) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        # the trace's warnings are about the branches for waves shorter than one frame (module docstring); torch
        # 2.13 also marks every torch.jit function deprecated (README: ONNX is the format to prefer)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
        traced = torch.jit.trace(module, example)
        with atomic_path(path) as tmp:
            torch.jit.save(traced, str(tmp), _extra_files={f"{RECORD_KEY}.json": json.dumps(record)})
            verify(torchscript_runner(tmp), module, record, path)


EXPORTERS: dict[str, Callable[[WaveEmbedding, Tensor, Path, dict], None]] = {
    "onnx": export_onnx, "torchscript": export_torchscript}


def verify(run: Callable[[np.ndarray], np.ndarray], module: WaveEmbedding, record: dict, path: Path) -> None:
    """The written graph against the eager module at verification_shapes: cosine >= MIN_COSINE for every
    embedding, or the export is refused. The results go into the record (the JSON beside the file)."""
    rng = np.random.default_rng(0)
    checks = []
    for batch, samples in verification_shapes(module.frontend.opts):
        wave = (0.1 * rng.standard_normal((batch, samples))).astype(np.float32)
        with torch.no_grad():
            expected = module(torch.from_numpy(wave)).numpy()  # (B, D)
        got = run(wave)
        cosine = float((l2_normalise(expected) * l2_normalise(got)).sum(axis=1).min())
        checks.append({"batch": batch, "samples": samples, "min_cosine": cosine,
                       "max_abs_diff": float(np.abs(expected - got).max())})
        if got.shape != expected.shape or not cosine >= MIN_COSINE:
            raise UserError(f"{path}: the exported graph does not reproduce the model on a ({batch}, {samples}) "
                            f"wave (shape {got.shape}, cosine {cosine:.6f} < {MIN_COSINE}); not written")
    record["verified"] = checks


def export_checkpoint(trained: Trained, checkpoint: Path, fmt: str, out: Path | None = None) -> Path:
    """Write the checkpoint's graph in `fmt` (default: beside the checkpoint, <stem><suffix>) and its record
    beside it (<file>.json). Returns the file."""
    check_format(fmt, checkpoint)
    path = Path(out) if out else checkpoint.with_suffix(SUFFIXES[fmt])
    module = wave_embedding(trained)
    record = export_record(trained, checkpoint, fmt)
    example = 0.1 * torch.randn(2, 3 * trained.cfg.sample_rate, generator=torch.Generator().manual_seed(0))
    EXPORTERS[fmt](module, example, path, record)
    sidecar = {**record, "file": path.name, "file_sha1": file_sha1(path)}
    atomic_write_text(record_path(path), json.dumps(sidecar, indent=2) + "\n")
    return path


def check_format(fmt: str, checkpoint: Path) -> None:
    if fmt not in EXPORTERS:
        raise UserError(f"{checkpoint}: cannot export as '{fmt}'; formats: {', '.join(EXPORTERS)}")


def record_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


# --- running an export ---------------------------------------------------------------------------------------

def onnx_session(path: Path, threads: int = 0, device: torch.device | None = None) -> object:
    """An onnxruntime InferenceSession of the file (CUDA when asked for and onnxruntime has it, else the CPU)."""
    require_onnx("--runtime onnx", ("onnxruntime",))
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    providers = ["CPUExecutionProvider"]
    if device is not None and device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as err:  # a truncated or foreign file: say which, not where in onnxruntime it broke
        raise UserError(f"{path}: not a loadable ONNX model ({str(err).strip().splitlines()[0][:200]})") from None


def onnx_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    session = onnx_session(path)
    return lambda wave: session.run([OUTPUT], {INPUT: wave})[0]


def torchscript_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    graph = torch.jit.load(str(path), map_location="cpu")

    def run(wave: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return graph(torch.from_numpy(wave)).numpy()
    return run


def onnx_record(session: object, path: Path) -> dict[str, object]:
    """The export record inside an ONNX file, its input and output names checked."""
    text = session.get_modelmeta().custom_metadata_map.get(RECORD_KEY)
    if text is None:
        raise UserError(f"{path}: no voiceprint export record in the file's metadata; write it with export.py")
    names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    if names != ([INPUT], [OUTPUT]):
        raise UserError(f"{path}: inputs {names[0]} and outputs {names[1]}, expected [{INPUT!r}] and [{OUTPUT!r}]")
    return json.loads(text)


def check_record(record: dict, cfg: Config, checkpoint: Path, sha1: str, path: Path) -> None:
    """An export used in place of `checkpoint` must come from it: the same model keys, the same file."""
    again = f"export it again: python export.py --checkpoint {checkpoint} --format {record.get('format', 'onnx')}"
    saved = record.get("config", {})
    for key in MODEL_KEYS:
        if saved.get(key) != getattr(cfg, key):
            raise UserError(f"{path}: exported with {key}={saved.get(key)!r}, but {checkpoint} has "
                            f"{key}={getattr(cfg, key)!r}; {again}")
    if record.get("checkpoint_sha1") != sha1:
        raise UserError(f"{path}: exported from another checkpoint ({record.get('checkpoint')}, sha1 "
                        f"{str(record.get('checkpoint_sha1'))[:12]}), not {checkpoint} (sha1 {sha1[:12]}); {again}")


@dataclass
class OnnxEmbedder(Embedder):
    """An Embedder whose forward runs the exported graph in onnxruntime (float32); everything else -- the
    extraction policy, batching, padding, cache and evaluation -- is the Embedder's. The cache and calibration
    signatures name the runtime and the file, so torch's and onnxruntime's embeddings never mix."""
    session: object = None
    onnx_path: str = ""
    onnx_sha1: str = ""

    def settings(self) -> dict[str, object]:
        return {**super().settings(), "runtime": "onnxruntime", "onnx_sha1": self.onnx_sha1}

    def forward(self, waves: list[np.ndarray]) -> np.ndarray:
        """(B,) equal-length waves -> (B, D) L2-normalised embeddings."""
        wave = np.ascontiguousarray(np.stack(waves), dtype=np.float32)  # (B, N)
        return l2_normalise(self.session.run([OUTPUT], {INPUT: wave})[0])


def onnx_path(cfg: Config, checkpoint: Path) -> Path:
    return Path(cfg.onnx_file) if cfg.onnx_file else checkpoint.with_suffix(SUFFIXES["onnx"])


def onnx_embedder(cfg: Config, embedder: Embedder, checkpoint: Path) -> OnnxEmbedder:
    """`embedder` with its forward run by onnxruntime on the checkpoint's ONNX export (cfg.onnx_file, or the
    file export.py writes beside the checkpoint), after checking that the file was exported from it."""
    path = onnx_path(cfg, checkpoint)
    if cfg.precision not in ("auto", "fp32"):
        raise UserError(f"--runtime onnx runs the float32 graph; --precision {cfg.precision} needs --runtime torch")
    if not path.is_file():
        raise UserError(f"{path}: no such ONNX file; write it with python export.py --checkpoint {checkpoint} "
                        f"--format onnx (or give --onnx-file)")
    session = onnx_session(path, cfg.threads, embedder.device)
    check_record(onnx_record(session, path), cfg, checkpoint, embedder.checkpoint_sha1, path)
    log.info("runtime: onnxruntime on %s (%s)", path, ", ".join(session.get_providers()))
    fields = {f.name: getattr(embedder, f.name) for f in dataclasses.fields(Embedder)}
    device = embedder.device if "CUDAExecutionProvider" in session.get_providers() else torch.device("cpu")
    embedder.model.cpu()  # frees its device memory: onnxruntime runs the graph now
    return OnnxEmbedder(**{**fields, "precision": "fp32", "device": device}, session=session,
                        onnx_path=str(path), onnx_sha1=file_sha1(path))
