"""nftables' refusals as one line, and a missing library as one line. The netns tier
(test_netns_nftlib.py) has libnftables refuse and list for real."""

from __future__ import annotations

import sys

import pytest

from tsproxy import nftlib
from tsproxy.errors import TsproxyError

pytestmark = pytest.mark.unit

PATH = "/proc/self/fd/3"
TRANSACTION = """\
table inet tsproxy-fgpu
delete table inet tsproxy-fgpu
delete rule ip filter DOCKER-USER handle 5
"""


@pytest.mark.parametrize("error, expected", [
    # libnftables 1.0.6, word for word: a rule the kernel refused, then a line nft could not
    # read; each names its line, whichever of the transaction's lines that is.
    (f"{PATH}:3:16-21: Error: Could not process rule: No such file or directory\n"
     "delete rule ip filter DOCKER-USER handle 5\n               ^^^^^^\n",
     "nft transaction (line 3: delete rule ip filter DOCKER-USER handle 5): "
     "Error: Could not process rule: No such file or directory"),
    (f"{PATH}:2:1-6: Error: syntax error, unexpected junk\ndelete table inet tsproxy-fgpu\n"
     f"^^^^^^\n{PATH}:3:1-3: Error: another complaint\n",
     "nft transaction (line 2: delete table inet tsproxy-fgpu): "
     "Error: syntax error, unexpected junk"),
    # No line to blame: nft's first complaint as it is.
    ("Error: Could not process rule: Operation not permitted\n",
     "nft transaction: Error: Could not process rule: Operation not permitted"),
    ("", "nft transaction: failed"),
])
def test_transaction_failure_names_the_line(error: str, expected: str) -> None:
    assert nftlib.failure(TRANSACTION, PATH, error) == expected


def test_missing_library_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nftlib, "_context", None)
    monkeypatch.setitem(sys.modules, "nftables", None)  # import fails as if not installed
    with pytest.raises(TsproxyError) as caught:
        nftlib.listing("list tables")
    assert str(caught.value) == ("libnftables not found: install the python3-nftables "
                                 "package")
    assert not isinstance(caught.value, nftlib.NftError)  # not "no such table" to the watchdog
