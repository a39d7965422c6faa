"""Write ``environment.yaml`` from ``requirements-lock.txt``: the conda environment installs the same
pinned, hash-checked files as ``make setup`` does.

The pins are copied into the YAML rather than referenced with ``-r``: Snakemake's ``--use-conda``
creates environments from a copy of the YAML under ``.snakemake/conda/``, where a relative path to the
lock would not resolve. ``tests/test_lock.py`` keeps the two files in step.

Usage: ``python tools/environment_from_lock.py [LOCK] [OUT]`` (``make lock`` runs it).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HEADER = """\
# Generated from requirements-lock.txt by tools/environment_from_lock.py (`make lock`); do not edit.
# Conda environment for the workflow's rules (snakemake --use-conda) and for a manual setup:
#   conda env create -f environment.yaml && conda activate refusal-sae
# The rules import the library from the checkout's src/ (rules/common.smk puts it on PYTHONPATH).
# torch is the CPU build (2.13.0+cpu); where pip does not find it, add PyTorch's CPU index:
#   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu conda env create -f environment.yaml
name: refusal-sae
channels:
  - conda-forge
dependencies:
  - python=3.11
  - pip
  - pip:
"""

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def parse_lock(text: str) -> dict[str, tuple[str, list[str]]]:
    """``name -> (version, [sha256, ...])`` for every pinned requirement of a pip-compile lock."""
    pins: dict[str, tuple[str, list[str]]] = {}
    name = None
    for line in text.splitlines():
        match = _PIN.match(line)
        if match:
            name = match.group(1).lower()
            pins[name] = (match.group(2), [])
        elif name is not None and "--hash=sha256:" in line:
            pins[name][1].append(line.split("--hash=sha256:", 1)[1].split()[0].rstrip("\\").strip())
        elif line and not line.startswith(" "):
            name = None
    return pins


def conda_environment(pins: dict[str, tuple[str, list[str]]]) -> str:
    """The ``environment.yaml`` text for ``pins`` (one pip line per package, with its hashes)."""
    lines = [HEADER.rstrip("\n")]
    for name in sorted(pins):
        version, hashes = pins[name]
        lines.append(f"      - {name}=={version}" + "".join(f" --hash=sha256:{h}" for h in hashes))
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    lock = Path(argv[1] if len(argv) > 1 else "requirements-lock.txt")
    out = Path(argv[2] if len(argv) > 2 else "environment.yaml")
    out.write_text(conda_environment(parse_lock(lock.read_text())))


if __name__ == "__main__":
    main(sys.argv)
