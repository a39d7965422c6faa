"""The lock is the single list of installed versions: environment.yaml carries exactly its pins and
hashes, and every pinned package satisfies pyproject.toml's ranges."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from environment_from_lock import conda_environment, parse_lock  # noqa: E402


def _lock() -> dict[str, tuple[str, list[str]]]:
    return parse_lock((ROOT / "requirements-lock.txt").read_text())


def test_every_locked_package_has_an_exact_version_and_a_hash() -> None:
    pins = _lock()
    assert len(pins) > 100 and "torch" in pins and "transformers" in pins
    assert all(hashes for _, hashes in pins.values())
    assert all(len(h) == 64 for _, hashes in pins.values() for h in hashes)


def test_environment_yaml_is_generated_from_the_lock() -> None:
    text = (ROOT / "environment.yaml").read_text()
    assert text == conda_environment(_lock()), "environment.yaml is stale: run `make lock`"
    pip = yaml.safe_load(text)["dependencies"][2]["pip"]
    assert len(pip) == len(_lock())


def test_lock_satisfies_pyproject_ranges() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    pins = _lock()
    for req in wanted:
        name = req.name.lower()
        assert name in pins, f"{name} is in pyproject.toml but not in the lock"
        version = pins[name][0]
        assert req.specifier.contains(version, prereleases=True), f"{name}=={version} is outside {req.specifier}"
