"""Data preparation for the public corpora: from the folders a user downloaded and unpacked to what train.py
and inference.py read, one command per corpus (the recipes in recipes/ point at its output).

    python -m data.recipes voxceleb1 --src DOWNLOADS --dst corpora/vox1
    python -m data.recipes voxceleb2 --src DOWNLOADS --dst corpora/vox2
    python -m data.recipes cnceleb   --src DOWNLOADS --dst corpora/cnceleb

What each looks for under --src (at any depth up to 3), as the archives unpack:
  voxceleb1  wav/id1NNNN/<video>/<utt>.wav (vox1_dev_wav.zip and vox1_test_wav.zip, unpacked into one wav/
             or into two folders), and the trial lists veri_test2.txt, list_test_all2.txt, list_test_hard2.txt
             (the cleaned VoxCeleb1-O/E/H; the original veri_test.txt, list_test_all.txt, list_test_hard.txt too).
  voxceleb2  aac/id0NNNN/<video>/<utt>.m4a of vox2_dev_aac.zip (a folder with `dev` in its path) and of
             vox2_test_aac.zip (any other); or wav/ trees of the same layout, already converted.
  cnceleb    CN-Celeb1, either release: CN-Celeb_flac/ (cn-celeb_v2.tar.gz) or CN-Celeb/ (the first, .wav),
             found by its data/, dev/dev.lst and eval/lists/trials.lst; and CN-Celeb2 (CN-Celeb2_flac/, which
             has no evaluation set of its own), found by its data/ and spk.lst.

What it writes under --dst:
  voxceleb1  wav/<spk>/<video>/<utt>.npy (all 1,251 speakers: the test folder of O, E and H), trials/<list>,
             dev/ (Kaldi layout: wav.scp, utt2spk) = every speaker absent from the O list (VoxCeleb1's
             1,211-speaker development set), for training on VoxCeleb1 alone.
  voxceleb2  dev/<spk>/<video>/<utt>.npy (the training set), test/<spk>/... when its test part is there.
  cnceleb    cnceleb1/ (the tree mirrored: data/, eval/enroll/, eval/test/ as .npy; eval/lists/ and
             dev/dev.lst copied), cnceleb2/data/ (.npy), and train/ (Kaldi layout) = CN-Celeb1's dev.lst
             speakers + every CN-Celeb2 speaker, the usual CN-Celeb training set.
Audio goes through data.prepare (int16 .npy, parallel worker processes, resumable after a kill: a file
already converted is skipped; --skip-bad lists unreadable inputs in <dst part>/bad_files.txt instead of
stopping). Trial lists are copied unchanged: they name .wav files, which data.trials finds as .npy.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from data.audio import require_av
from data.corpus import walk_audio
from data.prepare import add_conversion_flags, check_conversion_flags, prepare_corpus
from utils import UserError, atomic_write_text, run_main

log = logging.getLogger("voiceprint")

SEARCH_DEPTH = 3  # folder levels below --src searched for the corpus's parts
SPEAKER = re.compile(r"id\d{5}$")  # VoxCeleb and CN-Celeb speaker folder names
VOX1_LISTS = ("veri_test2.txt", "list_test_all2.txt", "list_test_hard2.txt", "veri_test.txt",
              "list_test_all.txt", "list_test_hard.txt")
CNCELEB_LISTS = ("trials.lst", "enroll.map", "enroll.lst", "test.lst")


# --- finding the parts of a download ---------------------------------------------------------------------

def folders(src: Path, depth: int = SEARCH_DEPTH) -> Iterator[Path]:
    """src and the folders below it, `depth` levels deep at most, sorted; speaker folders (id + 5 digits),
    which hold audio only, are not entered."""
    yield src
    if depth > 0:
        for child in sorted(p for p in src.iterdir() if p.is_dir() and not SPEAKER.match(p.name)):
            yield from folders(child, depth - 1)


def find(src: Path, test: Callable[[Path], bool], what: str) -> list[Path]:
    """The folders under src that pass `test`, none inside another; an error saying what was looked for."""
    if not src.is_dir():
        raise UserError(f"{src}: no such folder")
    found: list[Path] = []
    for folder in folders(src):
        if test(folder) and not any(folder.is_relative_to(f) for f in found):
            found.append(folder)
    if not found:
        raise UserError(f"{src}: no {what} in it (searched {SEARCH_DEPTH} folder levels deep)")
    return found


def speaker_tree(names: Sequence[str]) -> Callable[[Path], bool]:
    """A test for a folder named one of `names` that holds speaker folders (id + 5 digits)."""
    return lambda folder: folder.name in names and any(SPEAKER.match(p.name) for p in folder.iterdir()
                                                          if p.is_dir())


def first_with_extension(root: Path, ext: str) -> Path | None:
    return next((Path(folder) / name for folder, _, files in os.walk(root) for name in files
                 if name.endswith(ext)), None)


def check_decodable(root: Path) -> None:
    """VoxCeleb2 ships AAC in .m4a, which data.audio decodes through PyAV: checked before any conversion."""
    m4a = first_with_extension(root, ".m4a")
    if m4a is not None:
        require_av(m4a)


# --- writing ---------------------------------------------------------------------------------------------

def convert(src: Path, dst: Path, args: argparse.Namespace) -> None:
    result = prepare_corpus(src, dst, args.sample_rate, args.workers, args.skip_bad)
    log.info("%s -> %s: %d converted, %d already there, %d skipped", src, dst, result.converted,
             result.existing, len(result.bad))


def write_kaldi(folder: Path, utterances: Sequence[tuple[str, Path, str]]) -> None:
    """folder/wav.scp and utt2spk for (key, file, speaker) triples, the files relative to the folder."""
    if not utterances:
        raise UserError(f"{folder}: no utterances to list")
    scp = "".join(f"{key} {os.path.relpath(path, folder)}\n" for key, path, _ in utterances)
    atomic_write_text(folder / "wav.scp", scp)
    atomic_write_text(folder / "utt2spk", "".join(f"{key} {spk}\n" for key, _, spk in utterances))
    log.info("%s: %d utterances of %d speakers (Kaldi layout)", folder, len(utterances),
             len({s for _, _, s in utterances}))


def speaker_files(root: Path, speakers: Sequence[str]) -> list[tuple[str, Path, str]]:
    """(speaker/relative path without extension, file, speaker) of every audio file under root/<speaker>/."""
    out = []
    for spk in speakers:
        if not (root / spk).is_dir():
            raise UserError(f"{root / spk}: missing; the speaker list names it")
        out += [(f"{spk}/{os.path.splitext(rel)[0]}", root / spk / rel, spk) for rel in walk_audio(root / spk).files]
    return out


def copy_lists(src: Path, names: Sequence[str], dst: Path) -> list[Path]:
    """The first file of each name under src, copied into dst (atomically); the copies."""
    copies = []
    for name in names:
        found = next((f / name for f in folders(src) if (f / name).is_file()), None)
        if found is not None:
            atomic_write_text(dst / name, found.read_text())
            copies.append(dst / name)
    return copies


# --- the corpora -----------------------------------------------------------------------------------------

def voxceleb1(args: argparse.Namespace) -> None:
    src, dst = Path(args.src), Path(args.dst)
    for tree in find(src, speaker_tree(["wav"]), "VoxCeleb1 wav/ folder (wav/id1NNNN/<video>/<utt>.wav)"):
        convert(tree, dst / "wav", args)
    lists = copy_lists(src, VOX1_LISTS, dst / "trials")
    log.info("trial lists: %s", ", ".join(str(p) for p in lists) or f"none found; download {VOX1_LISTS[0]} ...")
    original = next((p for p in lists if p.name in ("veri_test2.txt", "veri_test.txt")), None)
    if original is None:
        log.warning("no VoxCeleb1-O list (veri_test2.txt): the development split (dev/) is not written")
        return
    test_speakers = {key.split("/")[0] for line in original.read_text().splitlines() for key in line.split()[1:]}
    speakers = sorted(p.name for p in (dst / "wav").iterdir() if p.is_dir() and p.name not in test_speakers)
    write_kaldi(dst / "dev", speaker_files(dst / "wav", speakers))


def voxceleb2(args: argparse.Namespace) -> None:
    src, dst = Path(args.src), Path(args.dst)
    trees = find(src, speaker_tree(["aac", "wav"]), "VoxCeleb2 aac/ folder (aac/id0NNNN/<video>/<utt>.m4a)")
    for tree in trees:
        check_decodable(tree)
    for tree in trees:
        convert(tree, dst / ("dev" if "dev" in tree.relative_to(src).parts else "test"), args)


def is_cnceleb1(folder: Path) -> bool:
    return (folder / "eval/lists/trials.lst").is_file() and (folder / "dev/dev.lst").is_file() and \
        (folder / "data").is_dir()


def is_cnceleb2(folder: Path) -> bool:
    return (folder / "spk.lst").is_file() and (folder / "data").is_dir() and not (folder / "eval").is_dir()


def cnceleb(args: argparse.Namespace) -> None:
    src, dst = Path(args.src), Path(args.dst)
    cn1 = find(src, is_cnceleb1, "CN-Celeb1 folder (data/, dev/dev.lst, eval/lists/trials.lst)")
    if len(cn1) > 1:
        raise UserError(f"{src}: holds {len(cn1)} CN-Celeb1 trees ({', '.join(map(str, cn1))}); pass one with --src")
    cn2 = [f for f in folders(src) if is_cnceleb2(f)]
    convert(cn1[0], dst / "cnceleb1", args)
    copy_lists(cn1[0] / "eval/lists", CNCELEB_LISTS, dst / "cnceleb1/eval/lists")
    copy_lists(cn1[0] / "dev", ["dev.lst"], dst / "cnceleb1/dev")
    train = speaker_files(dst / "cnceleb1/data", (cn1[0] / "dev/dev.lst").read_text().split())
    for i, tree in enumerate(cn2):
        part = dst / ("cnceleb2" if i == 0 else f"cnceleb2_{i}")
        convert(tree / "data", part / "data", args)
        train += speaker_files(part / "data", (tree / "spk.lst").read_text().split())
    if not cn2:
        log.warning("no CN-Celeb2 (data/ + spk.lst) under %s: training on CN-Celeb1's dev speakers only", src)
    keys: dict[str, Path] = {}
    for key, path, _ in train:
        if keys.setdefault(key, path) != path:
            raise UserError(f"{path}: speaker and name {key} also in {keys[key]}: CN-Celeb1 and 2 share an id")
    write_kaldi(dst / "train", train)


CORPORA: dict[str, Callable[[argparse.Namespace], None]] = {
    "voxceleb1": voxceleb1,
    "voxceleb2": voxceleb2,
    "cnceleb": cnceleb,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("corpus", choices=list(CORPORA))
    parser.add_argument("--src", required=True, help="the folder the archives were unpacked in")
    parser.add_argument("--dst", required=True, help="output folder (created; what is there already is kept)")
    add_conversion_flags(parser)
    args = parser.parse_args(argv)
    check_conversion_flags(args)
    CORPORA[args.corpus](args)


if __name__ == "__main__":
    run_main(main)
