"""How a count, a size and a duration are written in tables (one place for every table)."""

from __future__ import annotations


def fmt_count(n: float | None) -> str:
    if n is None:
        return "—"
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{int(n)}"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "—"
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= div:
            return f"{n / div:.1f} {unit}"
    return f"{int(n)} B"


def fmt_s(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f} s" if x < 1 else f"{x:.1f} s"


def fmt_ms(x: float | None) -> str:
    return "—" if x is None else f"{x * 1e3:.2f} ms" if x < 1 else f"{x:.2f} s"


def fmt_flops(x: float | None) -> str:
    return "—" if x is None else f"{x / 1e12:.2f} TFLOP/s" if x >= 1e12 else f"{x / 1e9:.1f} GFLOP/s"


def fmt_pct(v: float | None) -> str:
    """A percentage with the digits that matter: 100%, 5.41%, 0.037%, 0.0025%."""
    if v is None:
        return "—"
    if v == 0:
        return "0%"
    if v >= 1:
        return f"{v:.3g}%"
    return f"{v:.2g}%" if v >= 1e-4 else f"{v:.1e}%"
