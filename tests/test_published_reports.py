"""The published reports read as the project promises: the headline on the first screen, and no
table with a column that holds the same value in every row (it is stated once above the table)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REPORTS = sorted(p.parent.name for p in (ROOT / "reports").glob("*/README.md"))


def tables(md: str) -> list[list[list[str]]]:
    """Each pipe table's data rows (cells stripped), baseline rows left out."""
    out = []
    for block in re.findall(r"(?:^\|.*\n)+", md, flags=re.M):
        lines = block.strip().splitlines()
        rows = [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines[2:]]
        out.append([r for r in rows if not r[0].startswith("majority class")])
    return out


def test_the_quick_report_opens_with_its_headline():
    first = (ROOT / "reports/quick/README.md").read_text().splitlines()[:25]
    assert "## Headline" in first and any(line.startswith("| best accuracy") for line in first)


@pytest.mark.parametrize("report", REPORTS)
def test_no_table_has_a_column_with_one_value_in_every_row(report):
    md = (ROOT / "reports" / report / "README.md").read_text()
    for rows in tables(md):
        if len(rows) < 2:
            continue
        for i in range(1, len(rows[0])):  # the first column names the row
            values = {r[i] for r in rows}
            assert len(values) > 1, (report, rows[0][0], i, values)


def test_the_serving_report_is_what_the_current_code_writes_from_its_rows(tmp_path):
    """reports/serving/README.md is rewritten from its serving.jsonl by the current code, byte for
    byte (the figures are drawn again beside it)."""
    import shutil

    from peft_bench.serving.scale_report import rewrite_report

    src = ROOT / "reports/serving"
    for name in ("serving.jsonl", "COMMAND"):
        shutil.copy(src / name, tmp_path / name)
    rewrite_report(tmp_path)
    assert (tmp_path / "README.md").read_text() == (src / "README.md").read_text().replace(
        "--report reports/serving", f"--report {tmp_path}")
    assert {p.name for p in tmp_path.glob("*.png")} == {p.name for p in src.glob("*.png")}
