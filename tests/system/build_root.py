"""Debian 12 and 13 roots that build tsproxy's package: what a Debian user builds it on.

``ensure_build_image(suite)`` caches, beside the base roots of images.py, the base root of
`suite` plus exactly debian/control's Build-Depends (``apt-get build-dep``, so alternatives
such as ``systemd-dev | systemd (<< 253-2~)`` resolve as on a user's machine), lintian, and
autopkgtest (which runs debian/tests in a booted copy of the root). ``build_package()``
builds the source in a fresh root made from it, with no network, and lints the result.
Building needs no booted systemd: the root is entered with ``systemd-nspawn`` as a chroot.
"""

from __future__ import annotations

import atexit
import hashlib
import re
import shlex
import shutil
import subprocess
import tempfile
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from images import (
    ContainerError,
    cached_root,
    ensure_base_image,
    make_root,
    release_root,
    run_logged,
)

REPO = Path(__file__).resolve().parents[2]
TOOLS = ("lintian", "autopkgtest")
# Where the source goes in the root; the package, .buildinfo and .changes land in its parent.
SOURCE_DIR = "/build/tsproxy"


def _control_key(suite: str, base: Path) -> str:
    text = "\n".join([suite, base.name, *TOOLS, (REPO / "debian/control").read_text()])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_in_root(root: Path, script: str, *options: str, logfile: Path | None = None) -> str:
    """Run `script` in `root` with systemd-nspawn, not booted: a chroot with namespaces of its own.

    With `logfile`, the output goes there (and into the error); else it is returned, and a
    failure raises with it.
    """
    machine = f"tsproxy-build-{uuid.uuid4().hex[:8]}"
    cmd = ["systemd-nspawn", "-q", "-D", str(root), f"--machine={machine}", "--register=no", "--keep-unit",
           "--pipe", *options, "sh", "-c", script]
    try:
        if logfile is not None:
            run_logged(cmd, logfile)
            return ""
        done = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise ContainerError(f"{script} failed ({done.returncode}) in {root}:\n{done.stdout}{done.stderr}")
        return done.stdout
    finally:
        # nspawn leaves this behind when the host's /run is no tmpfs (see nspawn.Container).
        shutil.rmtree(Path("/run/systemd/nspawn/propagate") / machine, ignore_errors=True)


def ensure_build_image(suite: str) -> Path:
    """The cached build root of `suite`, made first if needed (a minute or two, with network)."""
    base = ensure_base_image(suite=suite)

    def make(root: Path, logfile: Path) -> None:
        subprocess.run(["cp", "-a", "--reflink=auto", str(base), str(root)], check=True)
        (root / "src/debian").mkdir(parents=True)
        shutil.copy(REPO / "debian/control", root / "src/debian/control")
        script = ("set -e; apt-get update -q; apt-get build-dep -y -q /src; "
                  f"apt-get install -y -q {' '.join(TOOLS)}; apt-get clean; rm -rf /src /var/lib/apt/lists/*")
        run_in_root(root, script, "--setenv=DEBIAN_FRONTEND=noninteractive", logfile=logfile)

    return cached_root(suite, "build", _control_key(suite, base), make)


def source_tar(*under: str) -> bytes:
    """The tracked files of the checkout (as they are on disk), all or those `under` the
    given paths, as a tar archive."""
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--", *under], check=True,
                           capture_output=True).stdout
    return subprocess.run(["tar", "-C", str(REPO), "--null", "-T", "-", "-c"], input=files, check=True,
                          capture_output=True).stdout


def copy_source(dest: Path) -> None:
    """The checkout's source tree (source_tar()) at `dest`."""
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-C", str(dest), "-x"], input=source_tar(), check=True)


LINTIAN_LINE = re.compile(r"^([EWIPXO]): ", re.M)


@dataclass(frozen=True)
class Built:
    """What a build in a root made: the files next to the source, and lintian's verdict."""

    outdir: Path
    lintian: str

    def file(self, pattern: str) -> Path:
        found = sorted(self.outdir.glob(pattern))
        if len(found) != 1:
            raise ContainerError(f"expected one {pattern} in {self.outdir}, found {found}")
        return found[0]

    def lintian_counts(self) -> dict[str, int]:
        """Tags by severity letter (E, W, I, P...) in lintian's output."""
        return dict(Counter(LINTIAN_LINE.findall(self.lintian)))


_built: dict[str, Built] = {}


def package(suite: str) -> Built:
    """build_package() of `suite`, once per test session (kept in a temp dir until it ends)."""
    if suite not in _built:
        outdir = Path(tempfile.mkdtemp(prefix=f"tsproxy-package-{suite}-", dir="/var/tmp"))
        atexit.register(shutil.rmtree, outdir, ignore_errors=True)
        _built[suite] = build_package(suite, outdir)
    return _built[suite]


def build_package(suite: str, outdir: Path) -> Built:
    """Build the checkout's source (source and binary) in a fresh build root of `suite`, with no
    network; copy what it made to `outdir`. Lintian runs in the same root (fails on errors and
    warnings; infos and pedantic tags are shown and counted)."""
    image = ensure_build_image(suite)
    workdir = Path(tempfile.mkdtemp(prefix="tsproxy-build-", dir="/var/tmp"))
    try:
        root = make_root(image, workdir)
        copy_source(root / SOURCE_DIR.lstrip("/"))
        logfile = outdir / f"build-{suite}.log"
        outdir.mkdir(parents=True, exist_ok=True)
        logfile.write_text("")
        build = (f"cd {shlex.quote(SOURCE_DIR)} && dpkg-checkbuilddeps && "
                 "dpkg-buildpackage -us -uc --no-sign")
        run_in_root(root, build, "--private-network", logfile=logfile)
        for path in (root / SOURCE_DIR.lstrip("/")).parent.iterdir():
            if path.is_file():
                shutil.copy(path, outdir / path.name)
        lint = run_in_root(root, f"lintian --fail-on error,warning -I --pedantic {SOURCE_DIR}/../tsproxy_*.changes",
                           "--private-network")
        return Built(outdir, lint)
    finally:
        release_root(workdir)
