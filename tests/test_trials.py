"""Trial lists: the VoxCeleb, Kaldi and CN-Celeb formats, enrolment maps, missing files and malformed lines
(data/trials.py)."""

import shutil

import numpy as np
import pytest
import soundfile as sf

from data.trials import load_trials, read_trials, trial_paths
from tests.conftest import make_cnceleb, noise_waves
from utils import UserError


def test_trial_formats(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("1 a b\n0 a c\n")
    vox = read_trials(path)
    path.write_text("a b target\na c nontarget\n")
    assert read_trials(path) == vox and [t.label for t in vox] == [1, 0]


def test_missing_trial_files_and_malformed_lines(tmp_path):
    (tmp_path / "spk" / "s").mkdir(parents=True)
    sf.write(tmp_path / "spk" / "s" / "1.wav", np.zeros(1600, dtype=np.int16), 16000)
    trials = tmp_path / "trials.txt"
    trials.write_text("1 spk/s/1.wav spk/s/1.wav\n0 spk/s/1.wav spk/s/2.wav\n0 spk/s/3.wav spk/s/1.wav\n")
    with pytest.raises(UserError, match=r"trials.txt: 2 of 3 trial files are not in .*, first: spk/s/2.wav"):
        trial_paths(read_trials(trials), tmp_path, trials)
    trials.write_text("1 a\n")
    with pytest.raises(UserError, match=r"trials.txt:1: expected"):
        read_trials(trials)


def test_a_list_keeps_one_format(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("a b target\n1 a c\n")
    with pytest.raises(UserError, match=r"t.txt:2: expected '<enroll> <test> target\|nontarget', got '1 a c'"):
        read_trials(path)
    path.write_text("0 b target\na c nontarget\n")  # a Kaldi key that looks like a label stays a key
    assert read_trials(path)[0].enroll == "0"


def test_a_listed_wav_is_found_under_another_audio_extension(tmp_path):
    """Lists name .wav files; data.prepare's copy holds .npy (and CN-Celeb's flac release .flac)."""
    (tmp_path / "spk/v").mkdir(parents=True)
    np.save(tmp_path / "spk/v/1.npy", np.zeros(1600, dtype=np.int16))
    sf.write(tmp_path / "spk/v/2.flac", np.zeros(1600), 16000)
    trials = tmp_path / "trials.txt"
    trials.write_text("1 spk/v/1.wav spk/v/2.wav\n0 spk/v/2.wav spk/v/1.wav\n")
    files = load_trials(trials, tmp_path).files
    assert files == {"spk/v/1.wav": str(tmp_path / "spk/v/1.npy"), "spk/v/2.wav": str(tmp_path / "spk/v/2.flac")}


@pytest.fixture(scope="module")
def cnceleb(tmp_path_factory):
    root = tmp_path_factory.mktemp("cn") / "CN-Celeb_flac"
    return make_cnceleb(root, noise_waves(["id00000", "id00800", "id00801"], 3, 0.5), ["id00800", "id00801"])


def test_cnceleb_trials_with_their_enrolment_map(cnceleb):
    """trials.lst (`enroll_id test 1|0`) with enroll.map beside it: the enrolment side is a model of several
    files under data/; the test side is under eval/. The corpus root and its eval/ folder both work."""
    lists = cnceleb / "eval/lists"
    for root in (cnceleb, cnceleb / "eval"):
        listing = load_trials(lists / "trials.lst", root)
        assert listing.models == {"id00800-enroll": ("id00800/singing-01-001.wav", "id00800/speech-01-002.wav"),
                                  "id00801-enroll": ("id00801/singing-01-001.wav", "id00801/speech-01-002.wav")}
        assert listing.enroll_map == str(lists / "enroll.map")
        assert len(listing.trials) == 4 and [t.label for t in listing.trials] == [1, 0, 0, 1]
        assert listing.files["id00800/speech-01-002.wav"] == str(cnceleb / "data/id00800/speech-01-002.flac")
        assert listing.files["test/id00801-vlog-01-003.wav"] == str(cnceleb / "eval/test/id00801-vlog-01-003.flac")
        assert set(listing.files) == {k for m in listing.models.values() for k in m} | {t.test for t in
                                                                                         listing.trials}


def _copy(cnceleb, tmp_path):
    shutil.copytree(cnceleb, tmp_path / "cn")
    return tmp_path / "cn", tmp_path / "cn/eval/lists"


def test_cnceleb_bad_input_names_the_file_and_line(cnceleb, tmp_path):
    root, lists = _copy(cnceleb, tmp_path)
    (root / "data/id00801/speech-01-002.flac").unlink()
    with pytest.raises(UserError, match=r"enroll.map:2: id00801/speech-01-002.wav: no such audio file under "):
        load_trials(lists / "trials.lst", root)
    (lists / "enroll.map").write_text("id00800-enroll id00800/singing-01-001.wav\n")
    with pytest.raises(UserError, match=r"trials.lst:3: enrolment id 'id00801-enroll' is not in .*enroll.map"):
        load_trials(lists / "trials.lst", root)
    (lists / "enroll.map").write_text("id00800-enroll\n")
    with pytest.raises(UserError, match=r"enroll.map:1: expected '<enroll_id> <utt> \[<utt> ...\]'"):
        load_trials(lists / "trials.lst", root)
    (lists / "enroll.map").unlink()
    with pytest.raises(UserError, match=r"trials.lst: a CN-Celeb trial list .* needs its enrolment map"):
        load_trials(lists / "trials.lst", root)


def test_cnceleb_missing_test_file_names_the_line(cnceleb, tmp_path):
    root, lists = _copy(cnceleb, tmp_path)
    (root / "eval/test/id00801-vlog-01-003.flac").unlink()
    with pytest.raises(UserError, match=r"trials.lst:2: test/id00801-vlog-01-003.wav: no such audio file under"):
        load_trials(lists / "trials.lst", root)
