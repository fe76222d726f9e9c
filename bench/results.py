"""Result records: one JSON line per run, from a dataclass with a schema version.

Sections: ``run`` (what ran: ids, resolved configs, time), ``status`` / ``error``, ``metrics``
(name -> {value, stderr, higher_is_better}), ``params`` (counts), ``resources`` (units in the key
names), ``baselines`` and ``env``. Numbers stay numbers; a missing value is ``null``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

SCHEMA_VERSION = 1
# switch.jsonl lines (bench/serving.py); 2: switches timed without a forward, first output beside
SWITCH_SCHEMA_VERSION = 2
Status = Literal["ok", "failed", "diverged", "oom", "timeout", "killed"]


@dataclass
class ResultRecord:
    run: dict[str, Any]
    status: Status = "ok"
    error: str | None = None
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    params: dict[str, int | None] = field(default_factory=dict)
    resources: dict[str, float | int | str | None] = field(default_factory=dict)
    baselines: dict[str, float | int | None] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def run_id(self) -> str:
        return self.run["run_id"]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ResultRecord":
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"result schema_version must be {SCHEMA_VERSION}, got {d.get('schema_version')!r}.")
        return cls(**d)


def append_record(path: Path, record: ResultRecord) -> None:
    append_line(path, record.to_json())


def append_line(path: Path, text: str) -> None:
    """Append one complete line with a single write, then fsync. A line torn by a crash (kill -9
    or power loss mid-write) is never read as a record (``read_records`` skips it), and the next
    append starts on a fresh line, so one torn write never damages another record."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (text + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line  # a previous write was torn by a crash: start on a fresh line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_records(path: Path) -> list[ResultRecord]:
    """All complete records of a JSONL file (a later record of the same run id wins)."""
    by_id: dict[str, ResultRecord] = {}
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        try:
            rec = ResultRecord.from_dict(json.loads(line))
        except (json.JSONDecodeError, TypeError):
            continue  # a line torn by a crash mid-write
        by_id[rec.run_id] = rec
    return list(by_id.values())


def read_json_lines(path: Path) -> list[dict]:
    """Every complete JSON line of a file (torn lines skipped); [] if the file does not exist."""
    out = []
    if Path(path).exists():
        for line in Path(path).read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out
