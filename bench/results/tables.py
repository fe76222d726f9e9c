"""Markdown tables of a report: one place that lays them out (github pipe tables via tabulate).

A column whose value is the same in every row (of two or more) says nothing row by row: it is
stated once above the table ("Same in every row: model: minilm; n: 1.") and left out of it.
"""

from __future__ import annotations

import pandas as pd
from tabulate import tabulate


def md_table(rows: list[dict], keep=(), extra: list[dict] = ()) -> str:
    """``rows`` as a markdown table; ``keep``: columns never folded into the line above (the
    variant's name, its score); ``extra``: rows (a baseline) that do not count when deciding
    which columns are the same in every row."""
    if not rows:
        return ""
    constant: dict[str, str] = {}
    if len(rows) > 1:
        constant = {k: rows[0][k] for k in rows[0]
                    if k not in keep and len({str(r.get(k)) for r in rows}) == 1}
    body = [{k: v for k, v in r.items() if k not in constant} for r in [*rows, *extra]]
    stated = {k: v for k, v in constant.items() if str(v) not in ("—", "")}  # an empty column is just left out
    same = ("Same in every row: " + "; ".join(f"{k.rstrip(' ↑↓')}: {str(v).strip('*')}" for k, v in stated.items())
            + ".\n\n") if stated else ""
    return same + tabulate(pd.DataFrame(body), headers="keys", tablefmt="github", showindex=False, disable_numparse=True)
