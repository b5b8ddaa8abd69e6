"""Booted Debian 12 and 13 containers (systemd-nspawn) for tsproxy's system tests.

Two parts:

* ``ensure_base_image(suite=...)`` builds, once per suite (bookworm, trixie), a
  minimal Debian root with debootstrap and caches it as a directory under
  ``$TSPROXY_TEST_CACHE`` (default ``/var/cache/tsproxy-test``), keyed by a hash
  of the suite, the package list and the layout version. ``make_root()`` gives
  each container a fresh writable root on top of it (an overlayfs mount, else a
  copy), so tests never dirty the cache.
* ``Container`` boots such a root with systemd as PID 1 and runs commands in it
  through ``nsenter``.

The host is not expected to run systemd (no machined), hence
``--register=no --keep-unit``, and commands enter the container by PID rather
than through ``machinectl``/``systemd-run -M``.
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
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

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

# Exit status of systemd-nspawn when the container asked for a reboot.
NSPAWN_REBOOT_STATUS = 133

# A predictable environment for commands run in the container: the caller's
# (pyenv shims, CI variables...) would leak in through nsenter otherwise.
CONTAINER_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "DEBIAN_FRONTEND": "noninteractive",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
}


class ContainerError(RuntimeError):
    """The container could not be started, reached, or stopped as asked."""


def wait_for(check: Callable[[], T], timeout: float = 30, interval: float = 0.2, what: str = "condition") -> T:
    """Poll `check` until it returns something truthy, and return that.

    Services in the container start asynchronously: tests poll for the state
    they expect rather than sleep.
    """
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


# --------------------------------------------------------------------------
# Base image
# --------------------------------------------------------------------------


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


def _host_codename() -> str:
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
    for wanted in dict.fromkeys([suite, _host_codename(), *SUITES]):
        if not wanted:
            continue
        for path in candidates:
            if path.suffix in (".list", ".sources") and path.is_file():
                mirrors = _mirrors_from_sources(path, wanted)
                if mirrors:
                    return mirrors[0]
    raise ContainerError(f"no apt source for suite {suite!r} (nor for {', '.join(SUITES)}) found under /etc/apt")


def _run_logged(cmd: Sequence[str], logfile: Path, **kwargs) -> None:
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
    _run_logged(
        ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", suite, str(dest), mirror],
        logfile,
    )
    configure_root(dest, mirror, suite)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialize builds of the cache between concurrent test sessions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure_base_image(packages: Sequence[str] = BASE_PACKAGES, suite: str = SUITE) -> Path:
    """The cached base root directory of `suite`, built first if needed (about a minute).

    Treat it as read-only: containers get a private overlay or copy of it
    (see make_root()), never the directory itself.
    """
    cache = cache_dir()
    if suite not in SUITES:
        raise ContainerError(f"unsupported suite {suite!r}: one of {', '.join(SUITES)}")
    image = cache / f"debian-{suite}-base-{image_key(packages, suite)}"
    if image.is_dir():
        return image
    with _locked(cache / f".debian-{suite}-base.lock"):
        if image.is_dir():  # built by another session while we waited
            return image
        mirror = host_mirror(suite)
        workdir = Path(tempfile.mkdtemp(prefix=".debian-base-", dir=cache))
        try:
            root = workdir / "root"
            logfile = image.with_name(image.name + ".log")
            logfile.write_text("")
            started = time.monotonic()
            build_base_root(root, mirror, logfile, packages, suite)
            log.info("%s: debootstrap + configure took %.0fs", suite, time.monotonic() - started)
            root.rename(image)  # atomic: readers only ever see a whole image
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        for old in cache.glob(f"debian-{suite}-base-*"):
            if old.is_dir() and old != image:
                shutil.rmtree(old, ignore_errors=True)
    return image


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


# --------------------------------------------------------------------------
# Container
# --------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _cgroup_dirs(leaf: str) -> list[Path]:
    """Where `leaf`, a child of this process's own cgroup, is (or would be) in each
    hierarchy systemd tracks processes with: cgroup v2 and v1's name=systemd.

    Empty where there is no such hierarchy or it can't be read.
    """
    try:
        own = dict(line.split(":", 2)[1:] for line in Path("/proc/self/cgroup").read_text().splitlines())
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except (OSError, ValueError):
        return []
    found: list[Path] = []
    for line in mounts:
        # ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS
        left, _, right = line.partition(" - ")
        fields, (fstype, _source, superopts) = left.split(), [*right.split(), "", "", ""][:3]
        mountpoint = fields[4]
        if fstype == "cgroup2":
            key = ""
        elif fstype == "cgroup" and "name=systemd" in superopts.split(","):
            key = "name=systemd"
        else:
            continue
        if fields[3] == "/" and key in own:
            found.append(Path(mountpoint + own[key].rstrip("/")) / leaf)
    return list(dict.fromkeys(found))


def _remove_cgroup_tree(top: Path) -> None:
    """rmdir `top` and every cgroup under it, deepest first; a live one is left alone."""
    if not top.is_dir():
        return
    deadline = time.monotonic() + 2
    for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
        while True:
            try:
                os.rmdir(dirpath)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                # Its last processes may still be on their way out.
                if time.monotonic() > deadline:
                    log.warning("cgroup %s left behind: %s", dirpath, exc)
                    break
                time.sleep(0.05)


class Container:
    """A Debian root booted with systemd-nspawn.

    Use as a context manager (or call close()): whatever happens, the
    container is killed and, if it owns it, its root is deleted.
    """

    def __init__(self, root: Path, name: str | None = None, workdir: Path | None = None, owns_workdir: bool = False,
                 nspawn_args: Sequence[str] = ()) -> None:
        self.root = Path(root)
        self.name = name or f"tsproxy-{uuid.uuid4().hex[:8]}"
        self.workdir = Path(workdir) if workdir else self.root.parent
        self.owns_workdir = owns_workdir
        self.console_log = self.workdir / "console.log"
        self.nspawn_args = list(nspawn_args)
        self.failed_units: list[str] = []
        self._nspawn: subprocess.Popen[bytes] | None = None
        self._pid1: int | None = None
        # Host cgroups of its own (see _make_cgroups); empty: it shares nspawn's.
        self.cgroups: list[Path] = []
        self.boots = 0

    @classmethod
    def from_image(cls, image: Path, parent: Path | None = None, **kwargs) -> Container:
        """A container on a fresh root made from `image`, in a temp dir it owns."""
        workdir = Path(tempfile.mkdtemp(prefix="tsproxy-nspawn-", dir=parent or "/var/tmp"))
        try:
            root = make_root(image, workdir)
        except BaseException:
            release_root(workdir)
            raise
        return cls(root, workdir=workdir, owns_workdir=True, **kwargs)

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._nspawn is not None and self._nspawn.poll() is None

    @property
    def pid1(self) -> int:
        if self._pid1 is None or not self.running:
            raise ContainerError(f"container {self.name} is not running")
        return self._pid1

    def _propagate_dir(self) -> Path:
        return Path("/run/systemd/nspawn/propagate") / self.name

    def boot(self, timeout: float = 30) -> None:
        """Start systemd-nspawn and wait until the container's systemd is PID 1.

        Does not wait for boot to finish; see wait_running().
        """
        if self.running:
            raise ContainerError(f"container {self.name} is already running")
        # A killed nspawn leaves this behind, and it makes the next boot fail.
        shutil.rmtree(self._propagate_dir(), ignore_errors=True)
        cmd = [
            "systemd-nspawn", "-D", str(self.root), "-b", f"--machine={self.name}",
            # No machined on the host: don't register, don't make a scope.
            "--register=no", "--keep-unit",
            "--private-network", "--console=read-only", "-q",
            # Plain text in console.log, no ANSI colour codes.
            "--setenv=SYSTEMD_COLORS=0",
            *self.nspawn_args,
        ]
        # Debian 12 and 13 boot with the unified cgroup v2 hierarchy only, so the
        # container gets that whatever the host runs. On a hybrid (v1) host nspawn
        # would otherwise hand it the v1 layout too: systemd 257 (trixie) still
        # boots there, but tainted "cgroupsv1", and 258 has no v1 at all. A
        # caller's own setting wins (set but empty: nspawn picks, as it used to).
        env = {"SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1", **os.environ}
        join_cgroups = self._make_cgroups()
        self.boots += 1
        with self.console_log.open("ab") as out:
            out.write(f"\n=== boot {self.boots}: SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="
                      f"{env['SYSTEMD_NSPAWN_UNIFIED_HIERARCHY']} {shlex.join(cmd)}\n".encode())
            out.flush()
            # Own session: a Ctrl-C meant for pytest must not reach the container,
            # and close() can kill the whole process group.
            self._nspawn = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True, env=env, preexec_fn=join_cgroups)
        self._pid1 = self._wait_pid1(timeout)

    def _make_cgroups(self) -> Callable[[], None] | None:
        """A cgroup of this container's own, and a function that moves the caller into it.

        With --keep-unit, nspawn puts the container's systemd in `payload` under
        nspawn's own cgroup. Without a systemd on the host that is the same cgroup
        for every container (even a root-level /payload), so containers running at
        once would share, say, system.slice/dbus.service (each systemd then counts
        the other's processes and CPU time in its units), and a killed container's
        cgroups would linger and turn up in the next one. nspawn started in a
        cgroup of its own keeps them apart, and it is removed when nspawn exits.
        Where cgroups can't be made, containers share as before.
        """
        dirs = []
        for path in _cgroup_dirs(f"nspawn-{self.name}"):
            try:
                path.mkdir(exist_ok=True)
            except OSError as exc:
                log.warning("no cgroup of its own for %s (%s)", self.name, exc)
                continue
            dirs.append(path)
        self.cgroups = dirs
        if not dirs:
            return None
        procs = [str(d / "cgroup.procs") for d in dirs]

        def join() -> None:  # runs in the child, before it execs nspawn
            for path in procs:
                try:
                    with open(path, "w") as f:
                        f.write("0")  # 0: the writing process itself
                except OSError:
                    pass

        return join

    def _remove_cgroups(self) -> None:
        for path in self.cgroups:
            _remove_cgroup_tree(path)

    def _wait_pid1(self, timeout: float) -> int:
        # nspawn's direct child becomes the container's PID 1 once it has
        # exec'd systemd (nspawn is its subreaper).
        assert self._nspawn is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._nspawn.poll() is not None:
                raise ContainerError(f"systemd-nspawn exited with {self._nspawn.returncode}:\n{self.console_tail()}")
            for child in _children(self._nspawn.pid):
                if _comm(child) == "systemd":
                    return child
            time.sleep(0.05)
        raise ContainerError(f"container systemd did not start within {timeout}s:\n{self.console_tail()}")

    def wait_running(self, timeout: float = 90) -> str:
        """Wait until boot finished; return "running" or "degraded".

        Degraded is accepted (some unit failed), but the failed units are kept
        in `failed_units` and logged, since they usually explain a later failure.
        """
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            remaining = max(1.0, deadline - time.monotonic())
            try:
                proc = self.run(["systemctl", "is-system-running", "--wait"], check=False, timeout=remaining)
            except subprocess.TimeoutExpired:
                break
            state = proc.stdout.strip()
            if state in ("running", "degraded"):
                self.failed_units = self._list_failed_units()
                if self.failed_units:
                    log.warning("container %s is degraded; failed units: %s", self.name, self.failed_units)
                return state
            # Before D-Bus/systemd's socket is up the call fails outright; retry.
            time.sleep(0.2)
        raise ContainerError(f"container {self.name} did not finish booting within {timeout}s "
                             f"(last state {state!r}):\n{self.debug_dump()}")

    def _list_failed_units(self) -> list[str]:
        proc = self.run(["systemctl", "list-units", "--failed", "--plain", "--no-legend"], check=False)
        return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]

    def _wait_exit(self, timeout: float) -> int:
        assert self._nspawn is not None
        try:
            status = self._nspawn.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ContainerError(
                f"container {self.name} did not stop within {timeout}s:\n{self.console_tail()}") from None
        # nspawn refuses to delete this itself when the host's /run is not a
        # tmpfs ("can't allow that"), and a leftover one fails the next boot.
        shutil.rmtree(self._propagate_dir(), ignore_errors=True)
        self._remove_cgroups()
        return status

    def reboot(self, timeout: float = 90) -> None:
        """Reboot from inside; nspawn exits with 133 and we boot the same root again."""
        self.run(["systemctl", "reboot", "--no-block"], check=False)
        status = self._wait_exit(timeout)
        if status != NSPAWN_REBOOT_STATUS:
            raise ContainerError(f"expected systemd-nspawn to exit {NSPAWN_REBOOT_STATUS} on reboot, got {status}")
        self._pid1 = None
        self.boot()
        self.wait_running(timeout)

    def poweroff(self, timeout: float = 60) -> int:
        """Clean shutdown; returns nspawn's exit status (0 when all went well)."""
        # SIGRTMIN+4 asks systemd for poweroff.target, like `systemctl poweroff`,
        # but works even when D-Bus in the container is wedged.
        os.kill(self.pid1, signal.SIGRTMIN + 4)
        status = self._wait_exit(timeout)
        self._pid1 = None
        return status

    def kill(self) -> None:
        """Stop the container at once, whatever state it is in."""
        if self._nspawn is None:
            return
        if self._nspawn.poll() is None:
            # Killing PID 1 of the container's PID namespace kills all inside it,
            # including what nsenter started; nspawn then exits on its own.
            if self._pid1 is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._pid1, signal.SIGKILL)
            try:
                self._nspawn.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self._nspawn.pid, signal.SIGKILL)
                self._nspawn.wait(10)
        self._pid1 = None
        shutil.rmtree(self._propagate_dir(), ignore_errors=True)
        self._remove_cgroups()

    def close(self, keep_root: bool | None = None) -> None:
        """Kill the container and delete its temp dir (unless TSPROXY_TEST_KEEP=1)."""
        self.kill()
        if keep_root is None:
            keep_root = os.environ.get("TSPROXY_TEST_KEEP") == "1"
        if self.owns_workdir:
            if keep_root:
                log.warning("keeping container root %s", self.workdir)
            else:
                release_root(self.workdir)

    # -- commands ----------------------------------------------------------

    def run(self, cmd: str | Sequence[str], check: bool = True, input: str | bytes | None = None,
            timeout: float = 120, text: bool = True, env: dict[str, str] | None = None,
            stdin: IO[bytes] | None = None) -> subprocess.CompletedProcess:
        """Run `cmd` in the container (all its namespaces, so paths are container paths).

        A string is run with `sh -c`. Output is captured; with check=True a
        failure raises CalledProcessError whose message includes the output.
        """
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        if isinstance(input, str) and not text:
            input = input.encode()
        if isinstance(input, bytes) and text:
            input = input.decode()
        full = ["nsenter", "-t", str(self.pid1), "-a", "--", *argv]
        proc = subprocess.run(full, input=input, stdin=stdin if input is None else None, capture_output=True,
                              timeout=timeout, text=text, env={**CONTAINER_ENV, **(env or {})})
        if check and proc.returncode != 0:
            raise CommandFailed(proc.returncode, argv, proc.stdout, proc.stderr)
        return proc

    def copy_in(self, host_path: str | Path, container_path: str, mode: int | None = None) -> None:
        """Copy a host file to `container_path` (parent dirs created).

        Streamed through the running container, so it also works for paths on
        the container's own tmpfs mounts (/run, /tmp); written straight into
        the root when the container is not running.
        """
        host_path = Path(host_path)
        mode = host_path.stat().st_mode & 0o7777 if mode is None else mode
        if not self.running:
            dest = self.root / container_path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(host_path, dest)
            dest.chmod(mode)
            return
        script = 'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"'
        with host_path.open("rb") as src:
            self.run(["sh", "-c", script, "sh", container_path, f"{mode:o}"], stdin=src)

    def write_file(self, container_path: str, content: str, mode: int = 0o644) -> None:
        self.run(["sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"',
                  "sh", container_path, f"{mode:o}"], input=content)

    # -- debugging ---------------------------------------------------------

    def console_tail(self, lines: int = 60) -> str:
        try:
            text = self.console_log.read_text(errors="replace")
        except OSError:
            return "(no console log)"
        # The console is a pty: lines end in \r\r\n, which would double-space the dump.
        kept = [line for line in text.replace("\r", "").splitlines() if line.strip()]
        return "\n".join(kept[-lines:])

    def journal(self, lines: int = 200, args: Sequence[str] = ()) -> str:
        proc = self.run(["journalctl", "-b", "--no-pager", "-n", str(lines), *args], check=False)
        return proc.stdout + proc.stderr

    def debug_dump(self, lines: int = 200) -> str:
        """Everything useful after a failure, as one string; never raises."""
        parts = [f"--- container {self.name} (root {self.root}, console log {self.console_log})"]
        if self.running and self._pid1 is not None:
            try:
                parts.append("--- failed units:\n" + "\n".join(self._list_failed_units()))
                parts.append(f"--- journalctl -b -n {lines}:\n" + self.journal(lines))
            except Exception as exc:  # a dump must not hide the original failure
                parts.append(f"(could not read journal: {exc!r})")
        else:
            parts.append("(container not running)")
        parts.append("--- console tail:\n" + self.console_tail())
        return "\n".join(parts)


class CommandFailed(subprocess.CalledProcessError):
    """CalledProcessError that shows the command's output in its message."""

    def __str__(self) -> str:
        return (f"{super().__str__()}\n--- stdout:\n{self.stdout or ''}\n--- stderr:\n{self.stderr or ''}")
