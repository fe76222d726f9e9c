"""The interactive page (index.html) of the published reports, rendered in headless Chromium (Debian's
``chromium``; .ci/run installs it): every variant is in its section's table, sorting from the
address reorders the rows, the filter keeps the matching ones, and the plots are drawn."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from peft_bench.results.aggregate import summarize
from peft_bench.results.store import read_records

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# as root on a closed network: no sandbox, no background connections (they are refused, many at a time)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")


def dom(page: Path, fragment: str, tmp_path: Path) -> str:
    out = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
                          "--dump-dom", page.as_uri() + fragment], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def sections(html: str) -> list[list[str]]:
    """The variant labels of each section's table, in the order shown."""
    parts = re.split(r'<section id="section-\d+">', html)[1:]
    return [re.findall(r'<tr data-label="([^"]*)"', p) for p in parts]


@pytest.mark.parametrize("report", ["quick", "lester"])
def test_published_pages_hold_every_variant_sort_filter_and_draw(report, tmp_path):
    folder = ROOT / "reports" / report
    page = folder / "index.html"
    assert page.is_file(), f"regenerate it: peftbench report reports/{report}"
    summary = summarize(read_records(folder / "results.jsonl"))
    html = dom(page, "", tmp_path)
    shown = sections(html)
    want = [sorted(summary[summary["task"] == t]["label"]) for t in sorted(set(summary["task"]))]
    assert [sorted(s) for s in shown] == want  # every variant, in every section
    assert int(re.search(r'data-drawn="(\d+)"', html).group(1)) >= sum(map(len, want))  # the Pareto points at least
    assert "https://" not in re.sub(r"https://www\.chartjs\.org", "", html.split("<body", 1)[1])  # nothing fetched
    # sorting from the address: stored bytes ascending
    by_stored = sections(dom(page, "#sort=stored_bytes&dir=asc", tmp_path))
    for task, labels in zip(sorted(set(summary["task"])), by_stored):
        rows = summary[summary["task"] == task].set_index("label")["stored_bytes"]
        assert [rows[x] for x in labels] == sorted(rows[x] for x in labels)
    assert by_stored != shown or len(shown[0]) < 2  # the default (best score first) differs from it
    filtered = sections(dom(page, "#filter=prompt_tuning", tmp_path))
    assert all(labels and all("prompt_tuning" in x for x in labels) for labels in filtered)


def test_a_screenshot_of_the_page(tmp_path):
    shot = tmp_path / "page.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
                    f"--screenshot={shot}", "--window-size=1400,1800", (ROOT / "reports/quick/index.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1400, 1800)
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 50  # text, tables and plots, not a blank page
