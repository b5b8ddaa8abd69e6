"""The cached Debian 12 and 13 base roots that tsproxy's system-test containers boot.

``ensure_base_image(suite=...)`` builds, once per suite (bookworm, trixie), a
minimal Debian root with debootstrap and caches it as a directory under
``$TSPROXY_TEST_CACHE`` (default ``/var/cache/tsproxy-test``), keyed by a hash
of the suite, the package list and the layout version. ``make_root()`` gives
each container a fresh writable root on top of it (an overlayfs mount, else a
copy), so tests never dirty the cache. Booting such a root is nspawn's job.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

# The Debian releases tsproxy supports, oldest first. The first is what
# ensure_base_image() builds when not told otherwise (`make demo`, the benchmark).
SUITES: tuple[str, ...] = ("bookworm", "trixie")
SUITE = SUITES[0]

# What tsproxy's .deb may depend on is pre-installed here (plus `tailscale`,
# which the tests install from tests/tailscale/build-deb), so that
# `apt-get install ./tsproxy.deb` works in a container without network.
# udev is left out on purpose: systemd-udevd does not run in a container.
BASE_PACKAGES: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "iproute2",
    "nftables",
    "python3",
    "python3-configobj",
    "python3-jinja2",
    "python3-nftables",
    "python3-pystemd",
    "python3-dnslib",
    "procps",
    "curl",
    "netcat-openbsd",
    "kmod",
    "ca-certificates",
)

# Bump when configure_root() changes, so cached images are rebuilt.
LAYOUT_VERSION = 1

HOSTNAME = "tsproxy-test"

# Units that only slow a container's boot or make it do things behind the
# tests' back. systemd-networkd-wait-online would wait for a network the
# private netns never gets; gettys would wait for a console nobody types on;
# the apt/dpkg timers would start apt while a test runs.
MASKED_UNITS: tuple[str, ...] = (
    "systemd-networkd-wait-online.service",
    "console-getty.service",
    "getty@.service",
    "serial-getty@.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
)


class ContainerError(RuntimeError):
    """The container could not be started, reached, or stopped as asked."""


def cache_dir() -> Path:
    return Path(os.environ.get("TSPROXY_TEST_CACHE", "/var/cache/tsproxy-test"))


def image_key(packages: Sequence[str] = BASE_PACKAGES, suite: str = SUITE) -> str:
    text = "\n".join([suite, f"layout={LAYOUT_VERSION}", *sorted(packages)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _deb822_stanzas(text: str) -> Iterator[dict[str, str]]:
    """Yield the stanzas of a deb822 file as {lower-case field: value}."""
    fields: dict[str, str] = {}
    last = ""
    for line in [*text.splitlines(), ""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if fields:
                yield fields
            fields, last = {}, ""
        elif line[0] in " \t" and last:
            fields[last] += " " + line.strip()
        elif ":" in line:
            last, _, value = line.partition(":")
            last = last.strip().lower()
            fields[last] = value.strip()


def _mirrors_from_sources(path: Path, suite: str) -> list[str]:
    text = path.read_text(errors="replace")
    found: list[str] = []
    if path.suffix == ".sources":
        for st in _deb822_stanzas(text):
            if st.get("enabled", "yes").lower() == "no":
                continue
            if "deb" in st.get("types", "").split() and suite in st.get("suites", "").split():
                found += st.get("uris", "").split()
    else:
        for line in text.splitlines():
            # deb [options] URI SUITE COMPONENTS...
            line = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0])
            words = line.split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                found.append(words[1])
    return found


def host_codename() -> str:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return ""
    found = re.search(r"^VERSION_CODENAME=\"?([a-z]+)", text, re.M)
    return found.group(1) if found else ""


def host_mirror(suite: str = SUITE) -> str:
    """The Debian mirror the host's apt uses for `suite`.

    Read at run time so nothing about this machine's network setup is baked
    into the repository. A suite the host has no source for (a bookworm host
    lists no trixie) comes from the mirror of the host's own release, then of
    any supported release it lists: one Debian mirror carries every suite.
    """
    etc = Path("/etc/apt")
    candidates = [etc / "sources.list"]
    if (etc / "sources.list.d").is_dir():
        candidates += sorted((etc / "sources.list.d").iterdir())
    for wanted in dict.fromkeys([suite, host_codename(), *SUITES]):
        if not wanted:
            continue
        for path in candidates:
            if path.suffix in (".list", ".sources") and path.is_file():
                mirrors = _mirrors_from_sources(path, wanted)
                if mirrors:
                    return mirrors[0]
    raise ContainerError(f"no apt source for suite {suite!r} (nor for {', '.join(SUITES)}) found under /etc/apt")


def run_logged(cmd: Sequence[str], logfile: Path, **kwargs) -> None:
    """Run a long build step with its output in `logfile`; raise with the tail on failure."""
    with logfile.open("a") as out:
        out.write(f"\n$ {shlex.join(cmd)}\n")
        out.flush()
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kwargs)
    if proc.returncode != 0:
        tail = "\n".join(logfile.read_text(errors="replace").splitlines()[-40:])
        raise ContainerError(f"{shlex.join(cmd)} failed ({proc.returncode}); see {logfile}:\n{tail}")


def configure_root(root: Path, mirror: str, suite: str = SUITE) -> None:
    """Make a debootstrapped root boot quickly and quietly as a test container."""
    (root / "etc/hostname").write_text(HOSTNAME + "\n")
    (root / "etc/hosts").write_text(
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    )
    # No password for root: a console login during debugging just works, and
    # nothing in the container ever prompts for one.
    subprocess.run(["chroot", str(root), "passwd", "-d", "root"], check=True, capture_output=True)
    # apt resolves `apt-get install ./x.deb` against what is installed, so it
    # works offline when every dependency is already present.
    (root / "etc/apt/sources.list").write_text(f"deb {mirror} {suite} main\n")
    (root / "etc/apt/apt.conf.d/90tsproxy-test").write_text(
        'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n'
        # A container has no network: fail at once rather than retry.
        'Acquire::Retries "0";\n'
    )
    systemctl = ["systemctl", f"--root={root}"]
    subprocess.run([*systemctl, "mask", *MASKED_UNITS], check=True, capture_output=True)
    subprocess.run([*systemctl, "set-default", "multi-user.target"], check=True, capture_output=True)
    # A persistent journal lets a test read the previous boot's log after reboot().
    (root / "var/log/journal").mkdir(parents=True, exist_ok=True)
    # Each container gets its own machine id (see make_root).
    (root / "etc/machine-id").write_text("")
    subprocess.run(["chroot", str(root), "apt-get", "clean"], check=True, capture_output=True)


def build_base_root(dest: Path, mirror: str, logfile: Path, packages: Sequence[str] = BASE_PACKAGES,
                    suite: str = SUITE) -> None:
    run_logged(
        ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", suite, str(dest), mirror],
        logfile,
    )
    configure_root(dest, mirror, suite)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Serialize builds of the cache between concurrent test sessions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def cached_root(suite: str, kind: str, key: str, make: Callable[[Path, Path], None]) -> Path:
    """The cached root directory debian-SUITE-KIND-KEY, made first by `make(root, logfile)` if
    missing. One session makes it while the others wait; older KEYs of the kind are deleted."""
    cache = cache_dir()
    image = cache / f"debian-{suite}-{kind}-{key}"
    if image.is_dir():
        return image
    with locked(cache / f".debian-{suite}-{kind}.lock"):
        if image.is_dir():  # built by another session while we waited
            return image
        workdir = Path(tempfile.mkdtemp(prefix=f".debian-{kind}-", dir=cache))
        try:
            root = workdir / "root"
            logfile = image.with_name(image.name + ".log")
            logfile.write_text("")
            started = time.monotonic()
            make(root, logfile)
            log.info("%s: the %s root took %.0fs", suite, kind, time.monotonic() - started)
            root.rename(image)  # atomic: readers only ever see a whole image
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        for old in cache.glob(f"debian-{suite}-{kind}-*"):
            if old.is_dir() and old != image:
                shutil.rmtree(old, ignore_errors=True)
    return image


def ensure_base_image(packages: Sequence[str] = BASE_PACKAGES, suite: str = SUITE,
                      variant: str = "base") -> Path:
    """The cached base root directory of `suite`, built first if needed (about a minute).

    Treat it as read-only: containers get a private overlay or copy of it
    (see make_root()), never the directory itself. A `variant` with other `packages`
    (e.g. "socat") is cached beside the base, under its own name: building one never
    removes the other, which concurrent test sessions may be booting.
    """
    if suite not in SUITES:
        raise ContainerError(f"unsupported suite {suite!r}: one of {', '.join(SUITES)}")
    return cached_root(suite, variant, image_key(packages, suite),
                       lambda root, logfile: build_base_root(root, host_mirror(suite), logfile, packages, suite))


def _mount_overlay(lower: Path, workdir: Path) -> Path | None:
    """Mount a writable overlay of `lower` at workdir/root; None if overlayfs is unusable."""
    upper, work, merged = workdir / "upper", workdir / "work", workdir / "root"
    for d in (upper, work, merged):
        d.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}", str(merged)],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        log.warning("overlayfs unavailable (%s), copying the base root instead", proc.stderr.strip())
        for d in (upper, work, merged):
            d.rmdir()
        return None
    return merged


def make_root(image: Path, workdir: Path) -> Path:
    """A fresh, private, writable root at workdir/root, backed by `image`.

    An overlay costs nothing to set up and keeps the image untouched; where
    overlayfs is missing, a full copy (a few seconds) does the same job.
    Release it with release_root(workdir).
    """
    root = None if os.environ.get("TSPROXY_TEST_COPY_ROOT") == "1" else _mount_overlay(image, workdir)
    if root is None:
        root = workdir / "root"
        subprocess.run(["cp", "-a", "--reflink=auto", str(image), str(root)], check=True)
    # Distinct ids keep journals apart; an empty one would make systemd treat
    # the boot as a first boot (and apply presets).
    (root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
    return root


def release_root(workdir: Path) -> None:
    """Unmount (if an overlay) and delete a root made by make_root()."""
    root = workdir / "root"
    if os.path.ismount(root) and subprocess.run(["umount", str(root)], capture_output=True).returncode != 0:
        # Something still holds it; detach it so the delete below can't
        # reach through it (it would only write whiteouts to upper anyway).
        subprocess.run(["umount", "-l", str(root)], capture_output=True)
    shutil.rmtree(workdir, ignore_errors=True)
