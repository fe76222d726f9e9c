"""What a result was measured in: packages, the lock file, the machine, the commit.

The lock file (``requirements.lock`` at the repository root, made by pip-compile from
pyproject.toml) *is* the environment: every record names its sha256 and says whether the
installed packages are exactly the locked ones (``lock_state``). Read once per process: the run
server reads it before forking runs.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import re
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from peft_bench.core.paths import CHECKOUT as ROOT  # noqa: E402  (the lock file lives there)
LOCK_FILE = ROOT / "requirements.lock"
PACKAGES = ("torch", "transformers", "peft", "datasets", "evaluate", "accelerate", "peft-bench")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def git_state(root: Path | None = None) -> dict[str, object]:
    root = root or ROOT
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"git_commit": commit, "git_dirty": dirty if commit else None}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _installed(pkg: str) -> str | None:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=None)
def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages a record names."""
    return {pkg: _installed(pkg) for pkg in PACKAGES}


def read_lock(path: Path = LOCK_FILE) -> dict[str, str]:
    """The lock's pins: {package name (lower case): version}."""
    pins = {}
    for line in Path(path).read_text().splitlines():
        m = _PIN.match(line.strip())
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def lock_mismatches(pins: dict[str, str]) -> dict[str, dict[str, str | None]]:
    """Locked packages whose installed version differs (a local build label such as torch's
    ``+cpu`` / ``+cu128`` is the same release: the CUDA build of a pinned torch matches its pin)."""
    out = {}
    for pkg, want in sorted(pins.items()):
        have = _installed(pkg)
        if have is None or have.split("+")[0] != want.split("+")[0]:
            out[pkg] = {"locked": want, "installed": have}
    return out


@functools.lru_cache(maxsize=None)
def lock_state() -> dict[str, object]:
    """{file, sha256, matches, mismatches} of the lock beside this checkout; sha256 None when
    there is none (an installed wheel carries no lock: its environment is not pinned)."""
    if not LOCK_FILE.is_file():
        return {"file": None, "sha256": None, "matches": None, "mismatches": {}}
    data = LOCK_FILE.read_bytes()
    bad = lock_mismatches(read_lock(LOCK_FILE))
    return {"file": LOCK_FILE.name, "sha256": hashlib.sha256(data).hexdigest(), "matches": not bad,
            "mismatches": bad}


def environment(device: torch.device) -> dict[str, object]:
    return {
        "packages": dict(package_versions()),
        "lock": dict(lock_state()),
        "python": platform.python_version(),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "hostname": platform.node(),
        **git_state(),
    }
