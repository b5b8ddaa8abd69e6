"""Fixtures for the system tier: a booted Debian 12 or 13 container per test.

    debian_suite   (session)  "bookworm" or "trixie": every system test runs on both
                              (ids debian12, debian13; `-k debian13` picks one)
    debian_image   (session)  cached base root dir of that suite, built on first use (~1 min)
    debian_root    (function) fresh private writable root over it (overlayfs)
    booted_debian  (function) nspawn.Container booted on debian_root, running
    tailscale_deb  (session)  path of tests/tailscale/build-deb's .deb

Every test gets its own root, so one test's installs never leak into the
next; with overlayfs that costs milliseconds and a boot well under a second.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

# The harness lives beside the tests; make it importable whatever pytest's import mode.
sys.path.insert(0, str(HERE))

import images  # noqa: E402
import nspawn  # noqa: E402


def _require_root() -> None:
    # tests/conftest.py already skips root tiers for non-root users; this
    # guards direct uses of the fixtures too.
    if os.geteuid() != 0:
        pytest.skip("systemd-nspawn containers need root")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    # Keep each phase's report on the item so fixture teardown can tell
    # whether the test failed and dump the container's state.
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def _test_failed(request: pytest.FixtureRequest) -> bool:
    reports = (getattr(request.node, f"rep_{when}", None) for when in ("setup", "call"))
    return any(rep is not None and rep.failed for rep in reports)


# Debian release -> test id. The session-scoped param makes pytest group the tests by
# suite: all of one suite's tests run, then the other's.
SUITE_IDS = {"bookworm": "debian12", "trixie": "debian13"}
assert tuple(SUITE_IDS) == images.SUITES


@pytest.fixture(scope="session", params=list(SUITE_IDS), ids=list(SUITE_IDS.values()))
def debian_suite(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def debian_image(debian_suite: str) -> Path:
    _require_root()
    return images.ensure_base_image(suite=debian_suite)


@pytest.fixture
def debian_root(debian_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    workdir = tmp_path_factory.mktemp("nspawn")
    root = images.make_root(debian_image, workdir)
    try:
        yield root
    finally:
        if os.environ.get("TSPROXY_TEST_KEEP") != "1":
            images.release_root(workdir)


@pytest.fixture
def booted_debian(debian_root: Path, request: pytest.FixtureRequest) -> Iterator[nspawn.Container]:
    container = nspawn.Container(debian_root, workdir=debian_root.parent)
    try:
        container.boot()
        container.wait_running()
        yield container
    finally:
        if _test_failed(request):
            # Printed output of a teardown shows up in the failure report.
            print(container.debug_dump())
        container.kill()


@pytest.fixture(scope="session")
def tailscale_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _require_root()
    outdir = tmp_path_factory.mktemp("tailscale-deb")
    proc = subprocess.run([str(REPO / "tests/tailscale/build-deb"), str(outdir)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"tests/tailscale/build-deb failed ({proc.returncode}):\n{proc.stderr}")
    return Path(proc.stdout.strip().splitlines()[-1])
