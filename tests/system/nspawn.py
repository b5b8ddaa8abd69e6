"""Booted Debian 12 and 13 containers (systemd-nspawn) for tsproxy's system tests.

``Container`` boots a root made by ``images.make_root()`` (a private writable
layer over a cached base image, see images.py) with systemd as PID 1 and runs
commands in it through ``nsenter``.

The host is not expected to run systemd (no machined), hence
``--register=no --keep-unit``, and commands enter the container by PID rather
than through ``machinectl``/``systemd-run -M``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TypeVar

from images import ContainerError, make_root, release_root

log = logging.getLogger(__name__)
T = TypeVar("T")

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
