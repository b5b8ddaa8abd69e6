"""Fixtures of the lab tier.

    lab   (module)  lab.Lab: the world and the gateway of lab.py, shared by the tests of a
                    module (they run in file order; the reboot comes last)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lab import Lab, running_lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    with running_lab(tmp_path_factory.mktemp("lab")) as lab:
        yield lab
