"""A public wespeaker checkpoint as a checkpoint of this project: `python -m models.wespeaker SRC OUT.pt`.

wespeaker (H. Wang et al., ICASSP 2023; github.com/wenet-e2e/wespeaker) publishes ResNet speaker models (e.g.
voxceleb_resnet34.zip: avg_model.pt + config.yaml) whose layers are those of models/resnet.py one for one,
under other names:

    wespeaker                           here
    conv1, bn1                          stem.0, stem.1
    layerL.I.conv1|bn1|conv2|bn2        stages.K.conv1|norm1|conv2|norm2   (K = blocks of layers < L, plus I)
    layerL.I.shortcut.0|1               stages.K.shortcut.0|1
    seg_1                               embed
    projection.weight (S, D)            the AAM head's weight (S, D), when the file has it

Its temporal statistics pooling (TSTP) takes the unbiased variance (torch.var) and sqrt(var + 1e-7), so the
converted model is recorded with stats_variance "unbiased" (config.py), which pools exactly so
(models/pooling.py): with the same weights it gives wespeaker's outputs (tests/test_wespeaker.py checks it
against wespeaker's forward written out, to 1e-6 of the output's scale).
The features must be wespeaker's too: Kaldi fbank, 25/10 ms hamming frames, per-utterance mean subtraction
(this project's defaults), at the model's mel count (read from the embedding layer's width, a multiple of 8).
The speakers of the head are unnamed in a wespeaker file: the converted list is wespeaker_00000, ...

Not converted, as a one-line error naming the file: wespeaker's ECAPA-TDNN, whose wiring differs from
models/ecapa_tdnn.py (its blocks are chained, not fed the sum of the earlier outputs; its aggregation is 3C wide,
not 1536; its attention has no BatchNorm; no BatchNorm follows its embedding), so equal weights would not give
equal outputs; a ResNet with wespeaker's second embedding layer (two_emb_layer); anything else.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import torch

from config import build_config, to_dict
from loss import head_from_config
from models import model_from_config
from runs import SCHEMA
from utils import UserError, atomic_torch_save, run_main

RESNETS = {(2, 2, 2, 2): "resnet18", (3, 4, 6, 3): "resnet34"}  # wespeaker's blocks per layer -> our name
_BLOCK_KEY = re.compile(r"layer([1-4])\.(\d+)\.(conv1|bn1|conv2|bn2|shortcut\.[01])\.(.+)$")
_RENAME = {"conv1": "conv1", "bn1": "norm1", "conv2": "conv2", "bn2": "norm2"}


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a wespeaker checkpoint file (or of avg_model.pt in a model folder), 'module.' prefixes
    of a DDP-wrapped model removed."""
    path = path / "avg_model.pt" if path.is_dir() else path
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated or foreign: say which file, not where in torch it broke
        raise UserError(f"{path}: not a readable checkpoint ({type(err).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def identify(state: dict[str, torch.Tensor], source: Path) -> str:
    """Our name for the architecture of a wespeaker state dict, or a one-line error."""
    if any(k.startswith("layer2.se_res2block") for k in state):
        raise UserError(f"{source}: a wespeaker ECAPA-TDNN, which this converter does not know: its wiring differs "
                        f"from models/ecapa_tdnn.py (chained blocks, 3C aggregation, attention without BatchNorm), "
                        f"so its weights would not give its outputs here; ResNets convert")
    if not {"conv1.weight", "seg_1.weight", "layer1.0.conv1.weight"} <= set(state):
        raise UserError(f"{source}: not a wespeaker ResNet checkpoint (no conv1, layer1.0 and seg_1 weights), and "
                        f"no other architecture converts")
    if "seg_2.weight" in state:
        raise UserError(f"{source}: a wespeaker ResNet with a second embedding layer (two_emb_layer), which "
                        f"models/resnet.py does not have")
    blocks = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{n}.")}) for n in range(1, 5))
    if blocks not in RESNETS:
        raise UserError(f"{source}: a wespeaker ResNet of {blocks} blocks per layer; converts: "
                        + ", ".join(f"{v} {k}" for k, v in RESNETS.items()))
    return RESNETS[blocks]


def resnet_key(key: str, offsets: tuple[int, ...]) -> str:
    """Our name of a wespeaker ResNet key; `offsets[L - 1]` = the blocks of the layers before layer L."""
    if key.startswith(("conv1.", "bn1.", "seg_1.")):
        first, rest = key.split(".", 1)
        return {"conv1": "stem.0", "bn1": "stem.1", "seg_1": "embed"}[first] + "." + rest
    match = _BLOCK_KEY.match(key)
    if match is None:
        raise KeyError(key)
    layer, index, part, rest = match.groups()
    part = _RENAME.get(part, part)
    return f"stages.{offsets[int(layer) - 1] + int(index)}.{part}.{rest}"


def convert(state: dict[str, torch.Tensor], source: Path) -> dict:
    """A checkpoint of this project (runs.load_trained, inference.py, --init-from read it) from a wespeaker
    ResNet state dict."""
    name = identify(state, source)
    channels, embed_dim = state["conv1.weight"].shape[0], state["seg_1.weight"].shape[0]
    n_mels = 8 * (state["seg_1.weight"].shape[1] // (2 * 8 * channels))
    cfg = build_config({"model": name, "channels": channels, "embed_dim": embed_dim, "n_mels": n_mels,
                        "stats_variance": "unbiased", "loss": "aam", "scale": 32.0})
    blocks = [k for k, v in RESNETS.items() if v == name][0]
    offsets = tuple(sum(blocks[:i]) for i in range(4))
    try:
        weights = {resnet_key(k, offsets): v for k, v in state.items() if k != "projection.weight"}
        model = model_from_config(cfg)
        model.load_state_dict(weights)
    except (KeyError, RuntimeError) as err:
        raise UserError(f"{source}: does not fit {name} (C={channels}, {n_mels} mels): "
                        f"{str(err).splitlines()[0]}") from None
    projection = state.get("projection.weight")
    speakers = [f"wespeaker_{i:05d}" for i in range(0 if projection is None else projection.shape[0])]
    head = head_from_config(cfg, embed_dim, len(speakers))
    if projection is not None:
        head.load_state_dict({"weight": projection})
    return {"model": model.state_dict(), "head": head.state_dict(), "config": to_dict(cfg), "speakers": speakers,
            "epoch": 0, "log": [], "best_eer": math.inf, "best_epoch": 0, "mid_epoch": None, "schema": SCHEMA,
            "converted_from": str(source)}


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("src", help="a wespeaker checkpoint (avg_model.pt) or the folder holding it")
    parser.add_argument("out", help="the checkpoint to write (e.g. exp/wespeaker-resnet34/checkpoints/best.pt)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    state = convert(read_state(Path(args.src)), Path(args.src))
    atomic_torch_save(state, out)
    print(f"{out}: {state['config']['model']} from {args.src}, stats_variance unbiased, "
          f"{len(state['speakers'])} head classes")
    return out


if __name__ == "__main__":
    run_main(main)
