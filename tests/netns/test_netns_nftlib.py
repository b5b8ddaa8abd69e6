"""libnftables in the process, in a network namespace of its own: a refused transaction is
one line naming its line and changes nothing, and a long-lived context (the watchdog's)
sees tables come and go that others change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]

# Run inside `unshare --net`: one context does everything, as in one watchdog process.
SCRIPT = """
import json, subprocess
from tsproxy import network, nftlib

def refused(call, *args):
    try:
        call(*args)
    except nftlib.NftError as error:
        return str(error)
    return None

good = ("table inet t\\ndelete table inet t\\n"
        "table inet t {\\n chain c {\\n  counter accept\\n }\\n}\\n")
seen = {
    "bad": refused(nftlib.load, good + "delete rule ip filter DOCKER-USER handle 5\\n"),
    "after_bad": subprocess.run(["nft", "list", "tables"], capture_output=True,
                                text=True).stdout,
    "missing": refused(nftlib.listing, "list table inet t"),
    "watch_missing": network.list_table("inet t"),
}
nftlib.load(good)
seen["listed"] = network.table_shape(network.list_table("inet t"))
subprocess.run(["nft", "flush", "chain", "inet", "t", "c"], check=True)
seen["flushed"] = network.table_shape(network.list_table("inet t"))
subprocess.run(["nft", "delete", "table", "inet", "t"], check=True)
seen["deleted"] = network.list_table("inet t")
print(json.dumps(seen))
"""


@pytest.fixture(scope="module")
def seen() -> dict[str, object]:
    if os.geteuid() != 0:
        pytest.skip("the netns tier needs root")
    done = subprocess.run(["unshare", "--net", sys.executable, "-c", SCRIPT],
                          env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # libnftables wrote nothing past its buffers
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_refused_transaction_is_one_line_and_changes_nothing(seen: dict[str, object]) -> None:
    assert seen["bad"] == ("nft transaction (line 8: delete rule ip filter DOCKER-USER "
                           "handle 5): Error: Could not process rule: No such file or directory")
    assert seen["after_bad"] == ""  # the table of lines 1-7 went with line 8


def test_listing_follows_changes_made_by_others(seen: dict[str, object]) -> None:
    assert seen["missing"] == "nft list table inet t: Error: No such file or directory"
    assert seen["watch_missing"] is None
    assert seen["listed"] == [["c", 1]]
    assert seen["flushed"] == [["c", 0]]
    assert seen["deleted"] is None
