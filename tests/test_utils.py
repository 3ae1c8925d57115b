"""The shared machinery of utils.py: Markdown tables, atomic writes and their stale temporaries, one-line
errors (from DataLoader workers, from non-UTF-8 text)."""

import os
import subprocess
import time

import pytest
import torch

from data.audio import AudioError
from utils import (
    _HOST,
    FOREIGN_TEMP_SECONDS,
    UserError,
    append_table_row,
    atomic_path,
    markdown_header,
    markdown_row,
    markdown_table,
    read_text,
    remove_stale_temps,
)


def test_markdown_table():
    assert markdown_table(["x", "y"], [{"x": 1, "y": "b"}]) == "| x | y |\n|---|---|\n| 1 | b |\n"


def test_markdown_header_and_rows():
    assert markdown_header(["a", "b", "c"]) == "| a | b | c |\n|---|---|---|\n"
    assert markdown_row(["a", "b", "c"], {"c": 0.5, "a": "x", "other": 1}) == "| x |  | 0.5 |\n"  # column order
    assert markdown_table(["a"], []) == markdown_header(["a"])


def test_append_table_row_writes_the_header_once(tmp_path):
    path = tmp_path / "sub" / "results.md"  # the folder is made
    columns = ["run", "EER %"]
    append_table_row(path, columns, {"run": "a", "EER %": "4.24"})
    append_table_row(path, columns, {"run": "b"})
    assert path.read_text() == "| run | EER % |\n|---|---|\n| a | 4.24 |\n| b |  |\n"
    assert path.read_text() == markdown_table(columns, [{"run": "a", "EER %": "4.24"}, {"run": "b"}])


# --- files and errors ------------------------------------------------------------------------------------

def test_stale_temporaries_of_dead_processes_are_removed_live_ones_kept(tmp_path):
    dead = subprocess.Popen(["true"])  # a pid that is gone
    dead.wait()
    (tmp_path / "sub").mkdir()
    stale = [tmp_path / f".best.pt.{_HOST}-{dead.pid}.abcd1234.tmp", tmp_path / "sub" / ".x.abcd_123.tmp"]
    live = [tmp_path / f".log.csv.{_HOST}-1.abcd1234.tmp", tmp_path / "sub" / ".y.abcd_124.tmp",
            tmp_path / ".notes.tmp", tmp_path / "user.tmp"]
    for p in stale + live:
        p.write_text("x")
    old = time.time() - FOREIGN_TEMP_SECONDS - 10
    os.utime(stale[1], (old, old))  # an old-style name: removed by age only
    assert sorted(remove_stale_temps(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in live)
    with pytest.raises(UserError, match="boom"), atomic_path(tmp_path / "z.txt") as tmp:
        tmp.write_text("half")
        raise UserError("boom")
    assert not (tmp_path / "z.txt").exists() and not list(tmp_path.glob(".z.txt.*"))


def test_a_user_error_raised_in_a_dataloader_worker_keeps_its_one_line():
    class Bad(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            raise AudioError(f"/data/{i}.wav: holds NaN or infinite samples (the first at sample 3)")

    loader = torch.utils.data.DataLoader(Bad(), batch_size=2, num_workers=1)
    try:
        next(iter(loader))
    except AudioError as err:
        assert str(err) == "/data/0.wav: holds NaN or infinite samples (the first at sample 3)"
    else:
        raise AssertionError("no error")


def test_read_text_names_the_line_of_a_non_utf8_byte(tmp_path):
    (tmp_path / "t.txt").write_bytes(b"1 a b\n0 c \xe9\n")
    with pytest.raises(UserError, match=r"t.txt:2: not UTF-8 text \(byte b'\\xe9'\)"):
        read_text(tmp_path / "t.txt")
