"""The package builds from its source in a Debian 12 and a Debian 13 root that has only
debian/control's Build-Depends (no network during the build), lintian finds no error or
warning there, and the units and the generator are where that release's systemd wants them."""

from __future__ import annotations

import subprocess

import build_root
import pytest

pytestmark = pytest.mark.system

# systemd's own answer on each release (pkg-config, see debian/rules), spelled out here so the
# test is a second opinion: Debian 13 forbids the aliased /lib (DEP17), Debian 12 expects it.
SYSTEMD_LIB = {"bookworm": "./lib/systemd", "trixie": "./usr/lib/systemd"}


def test_builds_from_build_depends_lintian_clean(debian_suite: str) -> None:
    built = build_root.package(debian_suite)
    print(f"lintian on {debian_suite} (-I --pedantic): {built.lintian_counts()}\n{built.lintian}")
    assert not {"E", "W"} & set(built.lintian_counts())
    for pattern in ("tsproxy_*.dsc", "tsproxy_*.tar.*", "tsproxy_*.buildinfo", "tsproxy_*.changes"):
        built.file(pattern)
    listing = subprocess.run(["dpkg-deb", "-c", str(built.file("tsproxy_*_all.deb"))],
                             check=True, capture_output=True, text=True).stdout
    paths = {line.split()[5] for line in listing.splitlines()}
    lib = SYSTEMD_LIB[debian_suite]
    assert {f"{lib}/system/tsproxy@.service", f"{lib}/system/tsproxy-dns.socket",
            f"{lib}/system-generators/tsproxy-generator"} <= paths
    assert not [p for p in paths if "/systemd/" in p and not p.startswith(lib)], sorted(paths)
    assert "./usr/share/doc/tsproxy/README.Debian" in paths
    assert "./usr/share/doc/tsproxy/examples/grafana-dashboard.json" in paths
