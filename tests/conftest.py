"""Shared test setup: tiers are markers; root tiers skip when not root, except in CI,
where a skipped tier would be a tier that silently did not run."""

from __future__ import annotations

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT_TIERS = ("netns", "system", "lab")

# The tests import the tree itself, not an installed copy.
sys.path.insert(0, REPO)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-goldens", action="store_true",
                     help="rewrite golden files from the current output instead of comparing")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    for item in items:
        tier = next((m for m in ROOT_TIERS if item.get_closest_marker(m)), None)
        if tier is None:
            continue
        if os.environ.get("CI"):
            raise pytest.UsageError(f"CI runs every tier, and the {tier} tier needs root")
        item.add_marker(pytest.mark.skip(reason=f"{tier} tier needs root"))


@pytest.fixture
def update_goldens(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-goldens"))
