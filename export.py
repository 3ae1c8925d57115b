"""Export a trained checkpoint as one graph, wave in, embedding out: ONNX or TorchScript.

    python export.py --checkpoint exp/NAME --format onnx           # exp/NAME/checkpoints/best.onnx (+ .json)
    python export.py --checkpoint exp/NAME --format torchscript    # exp/NAME/checkpoints/best.torchscript
    python export.py --format onnx --out model.onnx                # the newest run, to a file of your choice
    python inference.py --checkpoint exp/NAME --runtime onnx       # evaluate through onnxruntime

The graph takes a (batch, samples) float32 wave in [-1, 1] at the run's sample rate, the Kaldi fbank front end
inside it, and returns the (batch, embed_dim) raw embedding; both axes are dynamic. Beside the file,
<file>.json records the run's config, its speaker list, the checkpoint's sha1, the input and output names and
shapes, the front-end options and the check of the written graph against the model at several batch sizes and
lengths (cosine >= 0.9999, else nothing is written). deploy.py has the details. ONNX needs the optional
packages of requirements-optional.txt (onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import argparse
import logging
import typing
from pathlib import Path

from deploy import EXPORTERS, check_format, export_checkpoint
from runs import find_checkpoint, load_trained
from utils import UserError, run_main

log = logging.getLogger("voiceprint")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # one line, not argparse's usage dump
        raise UserError(message)


def parse_command_line(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="", help="checkpoint file or experiment folder (its best.pt); "
                                                         "default: the newest experiment under --exp-dir")
    parser.add_argument("--exp-dir", default="exp", help="root of the experiment folders (default: exp)")
    parser.add_argument("--format", required=True, help=" or ".join(EXPORTERS))
    parser.add_argument("--out", default="", help="the file to write; default: beside the checkpoint, "
                                                  "<checkpoint stem>.onnx or .torchscript")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    """The written file (its record is <file>.json)."""
    args = parse_command_line(argv)
    checkpoint = find_checkpoint(args.checkpoint, args.exp_dir)
    check_format(args.format, checkpoint)
    trained = load_trained(checkpoint)
    path = export_checkpoint(trained, checkpoint, args.format, Path(args.out) if args.out else None)
    print(f"{path}: {args.format}, {trained.cfg.model} from {checkpoint} (epoch {trained.epoch}); record in "
          f"{path.name}.json")
    return path


if __name__ == "__main__":
    run_main(main)
