"""`make repo`'s signed apt repository, used as a user uses it, and the package's DEP-8 tests.

In a booted Debian 12 and 13 root (the build root of build_root.py, which has autopkgtest):
tools/make-repo's repository of the package built for that release is served on loopback,
apt must refuse it under a wrong key and accept it under the exported one (gpgv on 12, sqv on
13), `apt-get install tsproxy` takes the package from it, and `autopkgtest` runs
debian/tests/control against the installed package. tailscale, which the user gets from
Tailscale's repository, is installed first from the test build (tests/tailscale/build-deb).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import build_root
import gateway
import pytest
from nspawn import Container, wait_for

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
MAKE_REPO = REPO / "tools/make-repo"
URL = "http://127.0.0.1:8000"
KEYRING = "/usr/share/keyrings/tsproxy-archive-keyring.gpg"
SOURCES = "/etc/apt/sources.list.d/tsproxy.sources"


def gpg(home: Path, *args: str) -> bytes:
    return subprocess.run(["gpg", "--homedir", str(home), "--batch", "--quiet", *args],
                          check=True, capture_output=True).stdout


def new_key(home: Path, name: str) -> None:
    home.mkdir(mode=0o700)
    gpg(home, "--passphrase", "", "--quick-generate-key", f"{name} <test@example.org>", "ed25519", "sign", "never")


def make_repo(out: Path, key: Path, *debs: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(MAKE_REPO), str(out), *map(str, debs)], capture_output=True, text=True,
                          env={**os.environ, "TSPROXY_REPO_KEY": str(key), **(env or {})})


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """An armored secret key for make-repo, and another key's public keyring (the wrong one)."""
    tmp = tmp_path_factory.mktemp("repo-keys")
    new_key(tmp / "good", "tsproxy test archive")
    new_key(tmp / "other", "someone else")
    (tmp / "good.asc").write_bytes(gpg(tmp / "good", "--armor", "--export-secret-keys"))
    (tmp / "good.pub.asc").write_bytes(gpg(tmp / "good", "--armor", "--export"))
    (tmp / "wrong.gpg").write_bytes(gpg(tmp / "other", "--export"))
    yield {"secret": tmp / "good.asc", "public": tmp / "good.pub.asc", "wrong": tmp / "wrong.gpg"}
    for home in ("good", "other"):
        subprocess.run(["gpgconf", "--homedir", str(tmp / home), "--kill", "gpg-agent"], check=False)


@pytest.fixture(scope="module")
def served(debian_suite: str, tailscale_deb: Path, keys: dict[str, Path],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    """A booted build root serving the suite's repository on loopback, tailscale installed,
    Debian's own source removed (no network here: the repository is the only source)."""
    out = tmp_path_factory.mktemp("apt") / "apt"
    made = make_repo(out, keys["secret"], gateway.tsproxy_deb(debian_suite))
    assert made.returncode == 0, made.stderr
    with Container.from_image(build_root.ensure_build_image(debian_suite)) as c:
        try:
            c.boot()
            c.wait_running()
            for path in out.iterdir():
                c.copy_in(path, f"/srv/apt/{path.name}")
            c.copy_in(tailscale_deb, f"/root/{tailscale_deb.name}")
            c.run(f"apt-get install -y -q /root/{tailscale_deb.name}")
            c.run("mv /etc/apt/sources.list /etc/apt/sources.list.offline")
            c.run("systemd-run --unit=apt-repo python3 -m http.server --bind 127.0.0.1 8000 --directory /srv/apt")
            wait_for(lambda: c.run(f"curl -sf -o /dev/null {URL}/InRelease", check=False).returncode == 0,
                     what="the repository's web server")
            # autopkgtest reads debian/ of the source: debian/tests and debian/control.
            c.run("mkdir -p /src/tsproxy && tar -C /src/tsproxy -x", input=build_root.source_tar("debian"),
                  text=False)
            yield c
        except BaseException:
            print(c.debug_dump())
            raise


def add_source(c: Container, keyring: str) -> subprocess.CompletedProcess[str]:
    """The user's two steps (key, .sources with the real URL), then apt-get update."""
    c.run(f"cp {keyring} {KEYRING} && sed 's|https://apt.example.org/tsproxy|{URL}|' "
          f"/srv/apt/tsproxy.sources > {SOURCES}")
    return c.run("apt-get update", check=False)


def test_make_repo_refuses_bad_keys_and_changes_nothing(keys: dict[str, Path], tmp_path: Path) -> None:
    deb = gateway.tsproxy_deb()
    out = tmp_path / "apt"
    assert make_repo(out, keys["secret"], deb).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (tmp_path / "garbage.asc").write_text("not a key\n")
    cases = {tmp_path / "missing.asc": "no such readable file",
             tmp_path / "garbage.asc": "gpg cannot import it",
             keys["public"]: "expected one secret key that can sign, found 0"}
    for key, why in cases.items():
        bad = make_repo(out, key, deb)
        assert bad.returncode == 1 and bad.stdout == ""
        assert bad.stderr.startswith(f"make-repo: TSPROXY_REPO_KEY={key}: {why}"), bad.stderr
        assert bad.stderr.count("\n") == 1, bad.stderr
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".apt.")]


def test_apt_verifies_the_repository_and_installs_from_it(served: Container, keys: dict[str, Path]) -> None:
    c = served
    c.copy_in(keys["wrong"], "/root/wrong.gpg")
    refused = add_source(c, "/root/wrong.gpg")
    assert refused.returncode != 0, refused.stdout + refused.stderr
    assert "is not signed" in refused.stderr, refused.stdout + refused.stderr
    assert c.run("apt-cache show tsproxy", check=False).returncode != 0

    accepted = add_source(c, "/srv/apt/tsproxy-archive-keyring.gpg")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "W:" not in accepted.stdout + accepted.stderr and "E:" not in accepted.stderr, accepted.stderr
    installed = c.run("apt-get install -y -q tsproxy")
    assert f"Get:1 {URL} ./ tsproxy" in installed.stdout, installed.stdout
    assert c.run("dpkg-query -W -f '${db:Status-Status}' tsproxy").stdout == "installed"
    assert URL in c.run("apt-cache policy tsproxy").stdout


def test_autopkgtest(served: Container) -> None:
    """debian/tests/control, run by autopkgtest itself on this machine (the null runner),
    with the package from the repository (--no-built-binaries: apt installs it). The null
    runner cannot know it runs on a throwaway booted machine, which isolation-machine asks
    for: this container is one."""
    c = served
    assert add_source(c, "/srv/apt/tsproxy-archive-keyring.gpg").returncode == 0
    run = c.run("autopkgtest --no-built-binaries --ignore-restrictions=isolation-machine /src/tsproxy -- null",
                check=False, timeout=600)
    print(run.stdout[-3000:], run.stderr[-3000:])
    summary = {line.split()[0]: line.split()[1] for line in run.stdout.splitlines()
               if len(line.split()) >= 2 and line.split()[1] in ("PASS", "FAIL", "SKIP", "FLAKY")}
    assert summary == {"smoke": "PASS", "generator": "PASS", "socks-request": "PASS"}, run.stdout + run.stderr
    assert run.returncode == 0
