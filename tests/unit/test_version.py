"""`tsproxy --version` prints the package's version, which is debian/changelog's: the one
dpkg shows for the installed package (the booted system test compares the two there)."""

from __future__ import annotations

import configparser
import re
import subprocess
from pathlib import Path

import pytest

import tsproxy
from tsproxy.cli import main

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def test_version_is_the_changelogs() -> None:
    # The first line of debian/changelog: `tsproxy (VERSION) DIST; urgency=...`.
    first = (REPO / "debian/changelog").read_text().splitlines()[0]
    match = re.fullmatch(r"tsproxy \(([^)]+)\) .*", first)
    assert match, first
    assert tsproxy.__version__ == match[1]
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    assert setup["metadata"]["version"] == "attr: tsproxy.__version__"


def test_version_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"tsproxy {tsproxy.__version__}\n"


def test_setuptools_reads_it() -> None:
    # What pybuild puts in the package's metadata.
    done = subprocess.run(["/usr/bin/python3", "setup.py", "--version"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == tsproxy.__version__
