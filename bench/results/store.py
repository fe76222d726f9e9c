"""The result store: ``results.jsonl``, one record per line (``results.schema``), appended whole
and fsynced, read back with damaged lines skipped and named, one writer at a time (``store_lock``);
``merge_stores`` joins stores, ``load_records`` reads a store or a folder holding one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

from peft_bench.core.paths import contained
from peft_bench.results.predictions import predictions_path
from peft_bench.results.schema import SCHEMA_VERSION, ResultRecord, record_problem


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
        rec = ResultRecord.from_dict(d)
        rec.origin = Path(path).parent  # the record's relative paths (predictions) resolve from here
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


def store_file(path: Path | str, what: str = "a result store") -> Path:
    """The ``results.jsonl`` of ``path`` (the file itself, or a folder holding one); else
    ``FileNotFoundError`` naming ``what`` was expected and the path given."""
    src = Path(path)
    f = src / "results.jsonl" if src.is_dir() else src
    if not f.is_file():
        raise FileNotFoundError(f"{what} must be a results.jsonl file or a folder holding one, got {str(src)!r}.")
    return f


def load_records(path: Path | str, warn: bool = True) -> list[ResultRecord]:
    """Every valid record of a result store (``results.jsonl``, or a folder holding one); a later
    record of the same run wins. ``FileNotFoundError`` naming the path when there is none."""
    return read_records(store_file(path), warn=warn)


def merge_stores(sources: list[Path], out_dir: Path) -> tuple[list[ResultRecord], int]:
    """Join result stores (``results.jsonl`` files or folders holding one) and what ``out_dir``
    already holds into ``out_dir/results.jsonl``, each run once: an ok record wins over a failed
    one, then the later finished. Written to a temporary file and renamed into place, so a crash
    leaves the old store whole. ``switch.jsonl`` lines are joined the same way (each line once).
    Each kept record's predictions file is copied beside the merged store (its relative path stays
    valid). Returns (the merged records, how many duplicate records were dropped)."""
    out_dir = Path(out_dir)
    files = [store_file(src, "each `merge` source") for src in sources]
    target = out_dir / "results.jsonl"
    if target.is_file() and all(f.resolve() != target.resolve() for f in files):
        files.insert(0, target)
    def rank(r: ResultRecord) -> tuple:
        return r.status == "ok", str(r.run.finished_at or "")

    best: dict[str, ResultRecord] = {}
    seen = 0
    for f in files:
        for rec in read_records(f):
            seen += 1
            if rec.run_id not in best or rank(rec) > rank(best[rec.run_id]):
                best[rec.run_id] = rec
    out_dir.mkdir(parents=True, exist_ok=True)
    for rec in best.values():
        src = predictions_path(rec)
        dst = out_dir / rec.run.predictions if rec.run.predictions else None
        if src is not None and src.is_file() and dst is not None and src.resolve() != dst.resolve():
            contained(dst, out_dir, "a predictions file").parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.merging")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
    switch_lines = list(dict.fromkeys(json.dumps(line, sort_keys=True) for f in files
                                      for line in read_json_lines(f.parent / "switch.jsonl")))
    for name, lines in (("results.jsonl", [r.to_json() for r in best.values()]), ("switch.jsonl", switch_lines)):
        if name == "switch.jsonl" and not lines:
            continue
        tmp = out_dir / f".{name}.merging"
        with open(tmp, "w") as fh:
            fh.write("".join(line + "\n" for line in lines))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out_dir / name)
    return list(best.values()), seen - len(best)
