"""Trial lists: both formats, missing files and malformed lines (data/trials.py)."""

import numpy as np
import pytest
import soundfile as sf

from data.trials import read_trials, trial_paths
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
