"""Result records: one JSON line per run, from a dataclass with a schema version.

Sections: ``run`` (what ran: ids, resolved configs, time), ``status`` / ``error``, ``metrics``
(name -> {value, stderr, higher_is_better}), ``params`` (counts), ``resources`` (units in the key
names), ``baselines`` and ``env``. Numbers stay numbers; a missing value is ``null``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

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



def append_record(path: Path, record: ResultRecord) -> None:
    append_line(path, record.to_json())


class StoreWriteError(RuntimeError):
    """A record could not be written whole (disk full, I/O error, read-only store)."""

    reason: str | None = None  # the OS's own words (check_writable)


def append_line(path: Path, text: str) -> None:
    """Append one complete line, then fsync, or raise ``StoreWriteError``.

    The line goes out in one ``write`` when the kernel takes it all; a short write (a full disk
    takes what fits) is continued until every byte is written or the write fails. A line torn by
    a crash or a failed write (kill -9, power loss, ENOSPC) is never read as a record
    (``read_records`` skips it), and the next append starts on a fresh line, so one torn write
    never damages another record."""
    path = Path(path)
    line = (text + "\n").encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as e:
        raise StoreWriteError(f"cannot open the result store {str(path)!r} for writing: {e.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line  # a previous write was torn by a crash: start on a fresh line
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError as e:
        raise StoreWriteError(f"could not write a whole record to {str(path)!r}: {e.strerror}. Every "
                              "earlier record is intact (a torn last line is skipped when read); make room "
                              "and run the suite again to resume.") from None
    finally:
        os.close(fd)


def check_writable(folder: Path) -> None:
    """Refuse, before anything runs, a folder that cannot be created or written (a file in its
    place, a read-only disk, no space for a first record): ``StoreWriteError`` naming it."""
    folder = Path(folder)
    probe = folder / f".write-check-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            data = memoryview(b"x" * 4096)  # about one record
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as e:
        err = StoreWriteError(f"the result folder {str(folder)!r} is not writable: {e.strerror}.")
        err.reason = e.strerror
        raise err from None


STATUSES = get_args(Status)
_SECTIONS = {f.name for f in fields(ResultRecord)}


def record_problem(d: object) -> str | None:
    """Why a parsed line is not a record this version can read (None when it is one)."""
    if not isinstance(d, dict):
        return f"not a JSON object but {type(d).__name__}"
    version = d.get("schema_version")
    if version != SCHEMA_VERSION:
        return f"schema_version {version!r}, this peft-bench reads {SCHEMA_VERSION}"
    unknown = sorted(set(d) - _SECTIONS)
    if unknown:
        return f"unknown section(s) {unknown}"
    run = d.get("run")
    if not isinstance(run, dict) or not isinstance(run.get("run_id"), str) or not run["run_id"]:
        return "no run.run_id"
    if d.get("status", "ok") not in STATUSES:
        return f"status {d.get('status')!r} is not one of {', '.join(STATUSES)}"
    metrics = d.get("metrics", {})
    if not isinstance(metrics, dict) or not all(isinstance(m, dict) and isinstance(m.get("value"), (int, float))
                                                for m in metrics.values()):
        return "metrics are not {name: {value: number, ...}}"
    if d.get("status", "ok") == "ok" and not metrics:
        return "status ok but no metrics"
    for sec in ("params", "resources", "baselines", "env"):
        if not isinstance(d.get(sec, {}), dict):
            return f"`{sec}` is not an object"
    return None


def read_records(path: Path, warn: bool = True) -> list[ResultRecord]:
    """All valid records of a JSONL file (a later record of the same run id wins).

    A line that is not a valid record (torn by a crash, damaged, another format) is skipped, and
    ``warn`` prints one line to stderr naming the file, how many were skipped, and the first few
    with their line numbers and why. A record of a newer ``schema_version`` than this peft-bench
    reads is an error naming the file and line: it is not damage, and must not be dropped."""
    by_id: dict[str, ResultRecord] = {}
    bad: list[str] = []
    for i, raw in enumerate(Path(path).read_bytes().split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            d = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            bad.append(f"line {i}: not a complete JSON line")
            continue
        problem = record_problem(d)
        if problem is not None:
            version = d.get("schema_version") if isinstance(d, dict) else None
            if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
                raise ValueError(f"{path}:{i}: a record of schema_version {version}, newer than this peft-bench "
                                 f"reads ({SCHEMA_VERSION}): upgrade peft-bench to read this store.")
            bad.append(f"line {i}: {problem}")
            continue
        rec = ResultRecord(**d)
        by_id[rec.run_id] = rec
    if bad and warn:
        print(f"peftbench: warning: {path}: skipped {len(bad)} line(s) that are not valid records ("
              + "; ".join(bad[:3]) + ("; ..." if len(bad) > 3 else "") + ")", file=sys.stderr)
    return list(by_id.values())


def read_json_lines(path: Path) -> list[dict]:
    """Every complete JSON object line of a file (torn or non-object lines skipped); [] if the file
    does not exist."""
    out = []
    if Path(path).exists():
        for raw in Path(path).read_bytes().split(b"\n"):
            try:
                d = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(d, dict):
                out.append(d)
    return out


class StoreBusy(RuntimeError):
    """Another process is writing to this result store."""


@contextlib.contextmanager
def store_lock(folder: Path):
    """Hold ``folder/.lock`` (an advisory ``flock``) while a suite writes to the store: a second
    ``peftbench run`` on the same store is refused, naming the process that holds it, instead of
    running every run a second time. The kernel drops the lock when its holder dies (kill -9
    included), so a stale lock file never blocks. Readers (report, compare) take no lock."""
    import fcntl

    path = Path(folder) / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise StoreBusy(f"the result store {str(folder)!r} is in use by {holder}; wait for it to finish, "
                            f"or use another --out.") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} (peftbench run, started {time.strftime('%Y-%m-%d %H:%M:%S')})".encode(), 0)
        yield
    finally:
        os.close(fd)
