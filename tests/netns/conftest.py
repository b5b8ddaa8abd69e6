"""Fixtures for the netns tier: every test gets its own fake host (see fakehost.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakehost import FakeHost, real_traces
from proxyhost import ProxyWorld, proxy_world


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "netns: needs root; real network namespaces")


@pytest.fixture
def host(tmp_path: Path) -> Iterator[FakeHost]:
    if os.geteuid() != 0:
        pytest.skip("the netns tier needs root")
    before = real_traces()
    fake = FakeHost(tmp_path)
    try:
        fake.build_network()
        yield fake
    finally:
        fake.close()
    # Whatever a test did, the machine running it saw none of it.
    assert real_traces() == before


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyWorld]:
    """The proxy's world (client, gateway and target namespaces), shared by a module's tests."""
    if os.geteuid() != 0:
        pytest.skip("the netns tier needs root")
    with proxy_world(tmp_path_factory.mktemp("proxy")) as built:
        yield built
