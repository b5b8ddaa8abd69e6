"""What the lab runs on the test machine, built or fetched once and cached under
${TSPROXY_TEST_CACHE:-/var/cache/tsproxy-test}:

    tailscale_binaries()  tailscaled and tailscale of tests/tailscale/build-deb (the same
                          build the gateway's .deb packs)
    controlplane()        tests/lab/controlplane, built with Go (modules from the module
                          proxy on first use), keyed by a hash of its sources
    sshd()                Debian's openssh-server, unpacked, never installed: the machine
                          gets no ssh service, the lab's ssh peer runs this binary
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def cache_dir() -> Path:
    path = Path(os.environ.get("TSPROXY_TEST_CACHE", "/var/cache/tsproxy-test"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _lock(name: str) -> int:
    fd = os.open(cache_dir() / f".{name}.lock", os.O_CREAT | os.O_RDWR, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _run(cmd: list[str], **kw) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def tailscale_deb(outdir: Path) -> Path:
    return Path(_run([str(REPO / "tests/tailscale/build-deb"), str(outdir)]).strip().splitlines()[-1])


def tailscale_binaries() -> tuple[Path, Path]:
    with tempfile.TemporaryDirectory() as tmp:
        deb = tailscale_deb(Path(tmp))  # builds the binaries first if needed
    version = deb.name.split("_")[1]
    bindir = cache_dir() / f"tailscale-{version}"
    return bindir / "tailscaled", bindir / "tailscale"


# testcontrol's RequireAuthKey refuses every RegisterRequest without the key, also that of
# a node key it already knows; a tailscaled re-registers that way each time it starts, so a
# restarted fgpu node would stay logged out ("invalid authkey"), which Tailscale's own
# control never does to a registered node. The lab builds a copy of the module's
# testcontrol.go with this one change (Go refuses overlays of module-cache files, and the
# cache is left as it is): a known node key registers again without the key, an unknown
# one still needs it.
TESTCONTROL = "tailscale.com/tstest/integration/testcontrol"
AUTHKEY_CHECK = ("if s.RequireAuthKey != \"\" && (req.Auth == nil || req.Auth.AuthKey != s.RequireAuthKey) {")
AUTHKEY_CHECK_LAB = ("if s.RequireAuthKey != \"\" && (req.Auth == nil || req.Auth.AuthKey != s.RequireAuthKey)"
                     " && !s.labKnownNode(req.NodeKey) {")
LAB_KNOWN_NODE = """
// labKnownNode: added by tsproxy's lab (tests/lab/labtools.py), see there.
func (s *Server) labKnownNode(k key.NodePublic) bool {
\ts.mu.Lock()
\tdefer s.mu.Unlock()
\t_, ok := s.nodes[k]
\treturn ok
}
"""


def _build_tree(src: Path, workdir: Path) -> Path:
    """tests/lab/controlplane with testcontrol as a patched package of its own module."""
    go = os.environ.get("GO", "go")
    _run([go, "mod", "download", "tailscale.com"], cwd=src)
    moddir = Path(_run([go, "list", "-m", "-f", "{{.Dir}}", "tailscale.com"], cwd=src).strip())
    original = moddir / "tstest/integration/testcontrol/testcontrol.go"
    text = original.read_text()
    if text.count(AUTHKEY_CHECK) != 1:
        raise RuntimeError(f"{original}: the auth key check to patch is not there once: "
                           "update tests/lab/labtools.py for this tailscale.com version")
    tree = workdir / "src"
    (tree / "testcontrol").mkdir(parents=True)
    (tree / "testcontrol/testcontrol.go").write_text(text.replace(AUTHKEY_CHECK, AUTHKEY_CHECK_LAB) + LAB_KNOWN_NODE)
    for name in ("go.mod", "go.sum"):
        shutil.copy(src / name, tree / name)
    main = (src / "main.go").read_text()
    if main.count(f'"{TESTCONTROL}"') != 1:
        raise RuntimeError(f"{src}/main.go: no import of {TESTCONTROL}")
    (tree / "main.go").write_text(main.replace(f'"{TESTCONTROL}"', '"tsproxy.test/lab/controlplane/testcontrol"'))
    return tree


def _tailscale_version(gomod: Path) -> str:
    for line in gomod.read_text().splitlines():
        words = line.replace("require", "").split()
        if len(words) >= 2 and words[0] == "tailscale.com":
            return words[1]
    raise RuntimeError(f"{gomod}: no tailscale.com requirement")


def controlplane() -> Path:
    src = HERE / "controlplane"
    # testcontrol panics on clients of another version: one pin for both builds.
    ours, theirs = _tailscale_version(src / "go.mod"), _tailscale_version(REPO / "tests/tailscale/go.mod")
    if ours != theirs:
        raise RuntimeError(f"tests/lab/controlplane pins tailscale.com {ours}, tests/tailscale {theirs}")
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum", "main.go"):
        digest.update((src / name).read_bytes())
    digest.update((AUTHKEY_CHECK_LAB + LAB_KNOWN_NODE).encode())
    out = cache_dir() / f"lab-controlplane-{digest.hexdigest()[:12]}" / "controlplane"
    if out.exists():
        return out
    fd = _lock("lab-controlplane")
    try:
        if not out.exists():
            tmp = Path(tempfile.mkdtemp(dir=cache_dir(), prefix=".lab-controlplane-"))
            try:
                tree = _build_tree(src, tmp)
                _run([os.environ.get("GO", "go"), "build", "-o", str(tmp / "controlplane"), "."], cwd=tree)
                shutil.rmtree(tree)
                for old in cache_dir().glob("lab-controlplane-*"):
                    shutil.rmtree(old, ignore_errors=True)
                tmp.rename(out.parent)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    finally:
        os.close(fd)
    return out


def sshd() -> Path:
    version = _run(["apt-cache", "policy", "openssh-server"]).split("Candidate:")[1].split()[0]
    out = cache_dir() / f"lab-sshd-{version.replace(':', '_')}"
    binary = out / "usr/sbin/sshd"
    if binary.exists():
        return binary
    fd = _lock("lab-sshd")
    try:
        if not binary.exists():
            tmp = Path(tempfile.mkdtemp(dir=cache_dir(), prefix=".lab-sshd-"))
            try:
                # Unpacked, not installed: no ssh service on the machine. Its libraries are
                # the machine's own (libc, libssl, ...), as for the installed ssh client.
                _run(["apt-get", "download", f"openssh-server={version}"], cwd=tmp)
                deb = next(tmp.glob("openssh-server_*.deb"))
                _run(["dpkg-deb", "-x", str(deb), str(tmp / "root")])
                for old in cache_dir().glob("lab-sshd-*"):
                    shutil.rmtree(old, ignore_errors=True)
                (tmp / "root").rename(out)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    finally:
        os.close(fd)
    return binary
