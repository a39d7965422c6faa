"""The README and docs/*.md link only to files that exist (relative links and images)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(page: Path) -> list[str]:
    """The link and image targets of a Markdown page that are paths in this repository."""
    targets = [m.group(1) for m in LINK.finditer(page.read_text())]
    return [t.split("#", 1)[0] for t in targets if not re.match(r"[a-z]+:|#", t)]


def test_links_are_found():
    assert "docs/reruns.md" in relative_links(ROOT / "README.md")
    assert relative_links(ROOT / "README.md") != [] and len(PAGES) > 1


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_points_to_a_file(page):
    missing = [t for t in relative_links(page) if not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(ROOT)}: missing {missing}"
