"""Studies: analyses beyond the comparison tables.

A suite opts into a study's report section with ``studies = ["lester"]``: ``lester`` checks the
claims of Lester et al. (2021) on the suite's runs. ``overhead`` is a maintainers' benchmark (the
harness against a plain PyTorch + peft loop: ``peftbench bench-overhead``).
"""

from __future__ import annotations

import importlib

from peft_bench.core.config import UnknownName

# name -> module whose ``report_section(summary) -> str`` writes the study's report section
REPORT_SECTIONS = {"lester": "peft_bench.studies.lester"}


def report_section(name: str, summary) -> str:
    if name not in REPORT_SECTIONS:
        raise UnknownName(f"unknown study {name!r}. Valid choices: {', '.join(sorted(REPORT_SECTIONS))}.")
    return importlib.import_module(REPORT_SECTIONS[name]).report_section(summary)
