"""Every path a suite derives stays under its root.

Suite files are shared: a suite's ``name`` and its model strings end up in folder names (the
result folder ``<out>/<name>``, artifact folders ``<out>/<name>/artifacts/<run id>``, cache files).
``check_name`` refuses a name that is not one safe path component, ``slug`` turns any string (a
model path, a hub id) into one, and ``contained`` refuses a path that resolves outside its root.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Callable

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # peft_bench: its suites/ and assets/metrics/
CHECKOUT = PACKAGE_DIR.parent  # the repository (an editable install runs from it): the lock, reports/

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NAME_RULE = "1-64 characters of letters, digits, '.', '_' and '-', starting with a letter or digit"


def is_safe_name(text: str) -> bool:
    return isinstance(text, str) and bool(_SAFE.match(text))


def check_name(text, what: str) -> str:
    """``text`` if it is one safe path component, else ValueError naming ``what`` and the rule."""
    if not is_safe_name(text):
        shown = text if not isinstance(text, str) or len(text) <= 80 else text[:77] + "..."
        raise ValueError(f"`{what}` must be {NAME_RULE}, got {shown!r}.")
    return text


def slug(text: str, max_len: int = 40) -> str:
    """A safe path component for any string: itself when it already is one (registered model,
    task and method names stay as they are), else its last path part with unsafe characters
    replaced, shortened, plus 8 hex digits of its sha256 (so two strings never share a slug)."""
    if is_safe_name(text) and len(text) <= max_len:
        return text
    tail = str(text).rstrip("/\\").replace("\\", "/").split("/")[-1]
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", tail).lstrip("._-")[:max_len - 9] or "x"
    return f"{base}-{hashlib.sha256(str(text).encode()).hexdigest()[:8]}"


def contained(path: Path, root: Path, what: str = "path") -> Path:
    """``path`` resolved (symlinks followed), which must lie inside ``root`` resolved; else
    ValueError naming both."""
    p, r = Path(path).resolve(), Path(root).resolve()
    if p != r and r not in p.parents:
        raise ValueError(f"refusing to write {what} {str(path)!r}: it resolves to {str(p)!r}, outside {str(r)!r}.")
    return p


def write_whole(path: Path, write: Callable[[Path], object]) -> Path:
    """Write ``path`` whole or not at all: ``write`` fills a temporary file beside it, which then
    replaces it in one rename (a crash or a failed write leaves the earlier file as it was)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
