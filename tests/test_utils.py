"""The shared machinery of utils.py: Markdown tables."""

from utils import append_table_row, markdown_header, markdown_row, markdown_table


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
