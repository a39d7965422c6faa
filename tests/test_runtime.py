"""Code fingerprints behind the rules' rerun triggers."""

from pathlib import Path

from refusal_sae.runtime import source_fingerprint

MODULE = '''"""Module docstring."""

LIMIT = 3
"""Attribute docstring."""


def f(x):
    """Function docstring."""
    return x + LIMIT  # a comment
'''


def _fingerprint(tmp_path: Path, text: str) -> str:
    path = tmp_path / "module.py"
    path.write_text(text)
    return source_fingerprint(path)


def test_docstrings_comments_and_layout_do_not_change_the_fingerprint(tmp_path: Path) -> None:
    base = _fingerprint(tmp_path, MODULE)
    reworded = (MODULE.replace("Module docstring.", "Reworded.").replace("Attribute docstring.", "Why 3.")
                .replace("Function docstring.", "Other words.").replace("# a comment", "# why"))
    assert _fingerprint(tmp_path, reworded) == base
    assert _fingerprint(tmp_path, MODULE.replace("\n\n\ndef", "\n\n\n\ndef")) == base


def test_code_edits_change_the_fingerprint(tmp_path: Path) -> None:
    base = _fingerprint(tmp_path, MODULE)
    assert _fingerprint(tmp_path, MODULE.replace("LIMIT = 3", "LIMIT = 4")) != base
    assert _fingerprint(tmp_path, MODULE.replace("x + LIMIT", "x - LIMIT")) != base
    # A function whose body is only a docstring still differs from one that returns.
    assert _fingerprint(tmp_path, MODULE.replace("    return x + LIMIT  # a comment\n", "")) != base
