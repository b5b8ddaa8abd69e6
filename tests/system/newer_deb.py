"""A second tsproxy .deb, newer than dist/'s, built from the same source for the upgrade test.

The tree is copied (as `make deb` does) to build/upgrade/src, a changelog entry with a higher
version goes on top of the copy's debian/changelog, and dpkg-buildpackage builds it there:
the checkout's own changelog never changes. The result lands in build/upgrade/.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SUFFIX = "+upgradetest1"
ENTRY = """tsproxy ({version}) unstable; urgency=medium

  * Upgrade test build: the same source as {base}, a higher version.

 -- tsproxy developers <tsproxy@example.org>  {date}

"""


def version_of(deb: Path) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], check=True,
                          capture_output=True, text=True).stdout.strip()


def build_newer_deb(base: Path) -> Path:
    """The source tree as a .deb of version <base's version>+upgradetest1."""
    base_version = version_of(base)
    version = base_version + SUFFIX
    out = REPO / "build/upgrade"
    shutil.rmtree(out, ignore_errors=True)
    src = out / "src"
    src.mkdir(parents=True)
    # As `make deb` copies it: the tree without its build outputs and git's store.
    subprocess.run("tar -c --exclude=./build --exclude=./dist --exclude=./.git . "
                   f"| tar -x -C {src}", shell=True, cwd=REPO, check=True)
    changelog = src / "debian/changelog"
    date = subprocess.run(["date", "-R"], check=True, capture_output=True, text=True).stdout
    changelog.write_text(ENTRY.format(version=version, base=base_version, date=date.strip())
                         + changelog.read_text())
    built = subprocess.run(["dpkg-buildpackage", "-us", "-uc", "-b", "--no-sign"], cwd=src,
                           capture_output=True, text=True)
    if built.returncode != 0:
        raise RuntimeError(f"building the newer .deb failed:\n{built.stdout[-3000:]}"
                           f"{built.stderr[-3000:]}")
    deb = out / f"tsproxy_{version}_all.deb"
    assert version_of(deb) == version
    return deb
