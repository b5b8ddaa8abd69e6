"""host_mirror()'s parsing of apt sources (no root, no container)."""

from __future__ import annotations

from pathlib import Path

import pytest
from images import _mirrors_from_sources

pytestmark = pytest.mark.unit


def test_deb822_picks_the_suite_and_skips_disabled(tmp_path: Path) -> None:
    path = tmp_path / "debian.sources"
    path.write_text(
        "Types: deb\n"
        "# a comment\n"
        "URIs: http://mirror.invalid/debian-security\n"
        "Suites: bookworm-security\n"
        "Components: main\n"
        "\n"
        "Types: deb\n"
        "URIs: http://off.invalid/debian\n"
        "Suites: bookworm\n"
        "Enabled: no\n"
        "\n"
        "Types: deb deb-src\n"
        "URIs: http://mirror.invalid/debian\n"
        "Suites: bookworm bookworm-updates\n"
        "Components: main\n"
    )
    assert _mirrors_from_sources(path, "bookworm") == ["http://mirror.invalid/debian"]


def test_one_line_style(tmp_path: Path) -> None:
    path = tmp_path / "sources.list"
    path.write_text(
        "# deb http://commented.invalid/debian bookworm main\n"
        "deb-src http://src.invalid/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.invalid/debian bookworm main contrib\n"
        "deb http://mirror.invalid/debian bookworm-updates main\n"
    )
    assert _mirrors_from_sources(path, "bookworm") == ["http://mirror.invalid/debian"]
