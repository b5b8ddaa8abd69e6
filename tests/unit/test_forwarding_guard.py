"""The forwarding guard's text for each record; the netns tier loads it into nft and sends
packets at it, the system tier does the same under systemd."""

from __future__ import annotations

import pytest

from tsproxy.forwarding import Holders, guard_rules

pytestmark = pytest.mark.unit

DELETE = "table ip tsproxy-forward-guard\ndelete table ip tsproxy-forward-guard\n"


def test_guard_lists_every_holders_veth() -> None:
    text = guard_rules(Holders(["fgpu", "work"], {"ip_forward": "0"}))
    assert text.count(DELETE) == 1
    assert '        iifname { "ts-fgpu", "ts-work" } accept\n' in text
    assert '        oifname { "ts-fgpu", "ts-work" } accept\n' in text
    # Its own drop, not the chain's policy: `up` warns about forward chains with policy
    # drop, and the counter tells how much the guard stopped.
    assert "policy accept;" in text and text.rstrip().endswith("counter drop\n    }\n}")


@pytest.mark.parametrize("holders", [
    Holders([], {"ip_forward": "0"}),  # the last instance stopped
    Holders(["fgpu"], None),  # the host forwarded before tsproxy
])
def test_no_guard_due_deletes_it(holders: Holders) -> None:
    assert guard_rules(holders) == DELETE
