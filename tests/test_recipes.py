"""recipes/ and data/recipes.py: every recipe is a config train.py accepts, and each corpus's preparation turns
a miniature download (the real layout and file names, a few speakers of noise) into the folders its recipes
read."""

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import train
from config import parse_config
from data.corpus import load_index, scan_kaldi
from data.recipes import main as prepare
from evaluation import load_trial_lists
from tests.conftest import make_cnceleb, noise_waves, write_m4a
from utils import UserError

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_is_a_train_config_that_cites_its_figures(recipe):
    cfg = parse_config(["--config", str(recipe)], "", "train.py")
    assert cfg.epochs >= 1
    text = recipe.read_text()
    assert "Published" in text and ("github.com/" in text or "none verified" in text)


def write_tree(root: Path, files: dict[str, np.ndarray]) -> None:
    for rel, wave in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / rel, wave, 16000)


def recipe_config(name: str):
    """The recipe's config, augmentation off (no MUSAN here)."""
    return parse_config(["--config", str(ROOT / "recipes" / name), "--musan", "", "--rirs", ""], "", "train.py")


def test_voxceleb1_download_to_recipe_inputs(tmp_path, monkeypatch):
    """vox1_dev_wav.zip and vox1_test_wav.zip unpacked into two folders, the cleaned lists beside them: one wav/
    of .npy files, the lists copied (their .wav names found as .npy), dev/ = the speakers not in the O list."""
    waves = noise_waves(["id10001", "id10002", "id10270", "id10271"], 2, 0.5)
    files = {f"{'vox1_test_wav' if spk >= 'id10270' else 'vox1_dev_wav'}/wav/{spk}/vid{i}/0000{i + 1}.wav": w
             for spk, ws in waves.items() for i, w in enumerate(ws)}
    write_tree(tmp_path / "downloads", files)
    o_list = "1 id10270/vid0/00001.wav id10270/vid1/00002.wav\n0 id10270/vid0/00001.wav id10271/vid0/00001.wav\n"
    (tmp_path / "downloads/veri_test2.txt").write_text(o_list)
    monkeypatch.chdir(tmp_path)
    prepare(["voxceleb1", "--src", "downloads", "--dst", "corpora/vox1", "--workers", "1"])
    assert sorted(p.name for p in Path("corpora/vox1/wav").iterdir() if p.is_dir()) == sorted(waves)
    assert {u.speaker for u in scan_kaldi(Path("corpora/vox1/dev"))} == {"id10001", "id10002"}
    cfg = recipe_config("voxceleb1_ecapa_tdnn.yaml")
    val, test = train.check_inputs(cfg)
    assert test[0].files["id10270/vid0/00001.wav"].endswith("corpora/vox1/wav/id10270/vid0/00001.npy")
    assert len(load_index(cfg.train_data, 16000)) == 4


def test_voxceleb2_download_to_recipe_inputs(tmp_path, monkeypatch):
    """vox2_dev_aac.zip's dev/aac/ (.m4a, decoded by PyAV) and a test part found by their paths, converted to
    .npy; without PyAV, an .m4a tree is a one-line error saying how to install it, before anything is written."""
    pytest.importorskip("av")
    waves = noise_waves(["id00012", "id00015", "id00017"], 2, 0.5)
    for spk, ws in waves.items():
        for i, w in enumerate(ws):
            part = "vox2_test_aac/aac" if spk == "id00017" else "dev/aac"
            write_m4a(tmp_path / f"downloads/{part}/{spk}/21Uxsk56VDQ/{i + 1:05d}.m4a", w)
    monkeypatch.chdir(tmp_path)
    prepare(["voxceleb2", "--src", "downloads", "--dst", "corpora/vox2", "--workers", "2"])
    utts = load_index(recipe_config("voxceleb2_ecapa_tdnn.yaml").train_data, 16000)
    assert len(utts) == 4 and {u.speaker for u in utts} == {"id00012", "id00015"}
    assert Path("corpora/vox2/test/id00017/21Uxsk56VDQ/00001.npy").is_file()
    monkeypatch.setitem(sys.modules, "av", None)  # import av now raises ImportError
    with pytest.raises(UserError, match=r"dev/aac/id00012/21Uxsk56VDQ/0000[12].m4a: reading .m4a needs PyAV"):
        prepare(["voxceleb2", "--src", "downloads", "--dst", "corpora/other"])
    assert not Path("corpora/other").exists()


def cnceleb_download(root: Path) -> None:
    """CN-Celeb_flac (2 dev and 2 eval speakers) and CN-Celeb2_flac (2 speakers), as the archives unpack."""
    make_cnceleb(root / "CN-Celeb_flac", noise_waves(["id00000", "id00001", "id00800", "id00801"], 3, 0.5),
                 ["id00800", "id00801"])
    cn2 = noise_waves(["id10000", "id10001"], 2, 0.5, seed=1)
    write_tree(root / "CN-Celeb2_flac/data", {f"{spk}/speech-01-{i + 1:03d}.flac": w for spk, ws in cn2.items()
                                             for i, w in enumerate(ws)})
    (root / "CN-Celeb2_flac/spk.lst").write_text("id10000\nid10001\n")


def test_cnceleb_download_to_recipe_inputs(tmp_path, monkeypatch, caplog):
    """CN-Celeb1 mirrored as .npy with its lists, CN-Celeb2 beside it, train/ = CN-Celeb1's dev.lst speakers and
    every CN-Celeb2 speaker; the recipe's trial list (enroll.map, .wav names) resolves; a second run converts
    nothing (resumable)."""
    cnceleb_download(tmp_path / "downloads")
    monkeypatch.chdir(tmp_path)
    prepare(["cnceleb", "--src", "downloads", "--dst", "corpora/cnceleb", "--workers", "2"])
    cfg = recipe_config("cnceleb_resnet34.yaml")
    train_utts = load_index(cfg.train_data, 16000)
    assert {u.speaker for u in train_utts} == {"id00000", "id00001", "id10000", "id10001"} and len(train_utts) == 10
    [cn] = load_trial_lists(cfg.test_trials, cfg.test_data)
    assert len(cn.trials) == 4 and set(cn.models) == {"id00800-enroll", "id00801-enroll"}
    assert all(p.endswith(".npy") for p in cn.files.values())
    assert Path("corpora/cnceleb/cnceleb1/eval/enroll/id00800-enroll.npy").is_file()
    with caplog.at_level(logging.INFO, logger="voiceprint"):
        prepare(["cnceleb", "--src", "downloads", "--dst", "corpora/cnceleb", "--workers", "1"])
    assert "0 converted, 16 already there" in caplog.text and "0 converted, 4 already there" in caplog.text


def test_a_download_without_the_corpus_is_a_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty: no CN-Celeb1 folder \(data/, dev/dev.lst, eval/lists/trials.lst\)"):
        prepare(["cnceleb", "--src", str(tmp_path / "empty"), "--dst", str(tmp_path / "out")])
    with pytest.raises(UserError, match=r"empty: no VoxCeleb1 wav/ folder"):
        prepare(["voxceleb1", "--src", str(tmp_path / "empty"), "--dst", str(tmp_path / "out")])
