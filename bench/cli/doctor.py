"""``peftbench doctor``: is this environment the locked one, and what would upstream drift break?

    peftbench doctor                 # installed packages against requirements.lock
    peftbench doctor --latest        # newest versions pyproject.toml allows, in a scratch venv:
                                     # which methods' contract tests break, with which versions
    peftbench doctor --latest --uncapped   # the same with pyproject's upper bounds dropped

``--latest`` needs the source checkout (pyproject.toml and tests/). It builds a new virtual
environment in a temporary folder (about 1.5 GB, a minute or two), installs the newest versions
of pyproject's dependencies there (the test extra included; torch stays at its `==` pin, whose
newer releases are multi-GB CUDA builds), runs tests/test_methods.py against this checkout's
code, and prints, per method, how many of its contract tests passed, with the first failure.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from peft_bench.core.environment import LOCK_FILE, ROOT, lock_state, read_lock

CONTRACT_TESTS = "tests/test_methods.py"


def check_lock(log: Callable[[str], None] = print) -> int:
    """Print whether the installed packages are exactly the lock's; 0 if they are, else 1."""
    state = lock_state()
    if state["sha256"] is None:
        log(f"no lock file at {LOCK_FILE}: this environment is not pinned (install from a checkout; see README).")
        return 1
    pins = read_lock(LOCK_FILE)
    log(f"{LOCK_FILE} (sha256 {state['sha256'][:16]}): {len(pins)} packages pinned")
    if state["matches"]:
        log("every locked package is installed at its locked version")
        return 0
    for pkg, v in state["mismatches"].items():
        log(f"  {pkg}: installed {v['installed'] or 'nothing'}, locked {v['locked']}")
    log("fix: pip install -r requirements.lock && pip install --no-deps -e .")
    return 1


def requirements(pyproject: Path, uncapped: bool) -> list[str]:
    """pyproject's dependencies and its test extra, as pip requirement strings; with ``uncapped``,
    upper bounds (<, <=, ~=, !=) are dropped, exact (==) pins are kept."""
    data = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(data["dependencies"]) + list(data.get("optional-dependencies", {}).get("test", []))
    if not uncapped:
        return reqs
    out = []
    for r in reqs:
        name, spec = re.match(r"^([A-Za-z0-9._\[\]-]+)\s*(.*)$", r).groups()
        parts = [p.strip() for p in spec.split(",") if p.strip()]
        kept = [p for p in parts if p.startswith((">=", ">", "=="))]
        out.append(name + ",".join(kept))
    return out


@dataclass
class MethodOutcome:
    passed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (test, first line of the failure)


def parse_junit(path: Path, methods: set[str] | None = None) -> dict[str, MethodOutcome]:
    """Per method (the first part of each test's parameter id, if it names one of ``methods``),
    its passed and failed tests; the other tests under "(other tests)"."""
    out: dict[str, MethodOutcome] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        m = re.search(r"\[([a-z0-9_]+)-", case.get("name", ""))
        method = m.group(1) if m and (methods is None or m.group(1) in methods) else "(other tests)"
        o = out.setdefault(method, MethodOutcome())
        bad = next((c for c in case if c.tag in ("failure", "error")), None)
        if bad is None:
            if not any(c.tag == "skipped" for c in case):
                o.passed += 1
            continue
        text = (bad.get("message") or bad.text or "").strip().splitlines()
        o.failed.append((case.get("name", ""), text[0][:200] if text else bad.tag))
    return out


def latest(uncapped: bool = False, venv: Path | None = None, log: Callable[[str], None] = print) -> int:
    """Install the newest allowed versions into a scratch venv and run the method contract tests
    there; 0 when every method passes, 1 when one breaks."""
    pyproject = ROOT / "pyproject.toml"
    if not pyproject.is_file() or not (ROOT / CONTRACT_TESTS).is_file():
        raise FileNotFoundError(f"`doctor --latest` needs the source checkout (pyproject.toml and {CONTRACT_TESTS}) "
                                f"under {ROOT}.")
    tmp = tempfile.TemporaryDirectory(prefix="peftbench-doctor-") if venv is None else None
    where = Path(tmp.name if tmp else venv)
    env_dir = where / "venv"
    reqs = requirements(pyproject, uncapped)
    try:
        log(f"scratch venv: {env_dir}")
        subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
        py = str(env_dir / "bin" / "python")
        log("installing the newest versions of: " + " ".join(reqs))
        subprocess.run([py, "-m", "pip", "install", "-q", "--upgrade", *reqs], check=True)
        pins = read_lock(LOCK_FILE) if LOCK_FILE.is_file() else {}
        newer = _versions_against(py, pins)
        log("versions that differ from requirements.lock: "
            + (", ".join(f"{k} {v['installed']} (locked {v['locked']})" for k, v in newer.items()) or "none"))
        junit = where / "junit.xml"
        log(f"running {CONTRACT_TESTS} there against this checkout's code ...")
        subprocess.run([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", CONTRACT_TESTS, f"--junitxml={junit}"],
                       cwd=ROOT, env=_env_with_root(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        if not junit.is_file():
            raise RuntimeError(f"pytest wrote no results ({junit}); run it by hand in {env_dir} to see why.")
        from peft_bench.core.registry import METHODS, load_builtin_plugins

        load_builtin_plugins()
        results = parse_junit(junit, set(METHODS.names()))
    finally:
        if tmp is not None:
            tmp.cleanup()
    broken = {m: o for m, o in results.items() if o.failed}
    for method, o in sorted(results.items()):
        state = "ok" if not o.failed else "BROKEN"
        log(f"  {method:<20} {state:<7} {o.passed} passed, {len(o.failed)} failed"
            + (f": {o.failed[0][0]}: {o.failed[0][1]}" if o.failed else ""))
    if broken:
        log(f"{len(broken)} method(s) break with these versions: {', '.join(sorted(broken))}. "
            "Keep the lock, and exclude the breaking versions in pyproject.toml.")
    else:
        log("every method's contract tests pass with these versions")
    return 1 if broken else 0


def _versions_against(py: str, pins: dict[str, str]) -> dict[str, dict[str, str | None]]:
    """lock_mismatches, evaluated by the scratch venv's interpreter."""
    code = ("import json, sys; from peft_bench.core.environment import lock_mismatches; "
            "print(json.dumps(lock_mismatches(json.loads(sys.stdin.read()))))")
    res = subprocess.run([py, "-c", code], input=json.dumps(pins), capture_output=True, text=True,
                         cwd=ROOT, env=_env_with_root())
    return json.loads(res.stdout) if res.returncode == 0 and res.stdout.strip() else {}


def _env_with_root() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env

