"""The status page (`GET /`): its request, its health line held to `tsproxy status`'s for the
same world (a fake systemd and a fake tailscaled, as test_status_cli.py builds them), hostile
names and OS strings from tailscaled escaped, peer links, and the traffic figures."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Iterator
from html import escape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from proto_harness import Outcome, refused, tr
from test_http_pac import GET_OR_HEAD, pac_head

from tsproxy import health, page, status
from tsproxy.localapi import LocalAPI
from tsproxy.network import Shape
from tsproxy.proto import HttpConnectHandshake, LocalRequest
from tsproxy.proxy.stats import Stats
from tsproxy_generator.config import load
from tsproxy_generator.model import TailnetConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fake_localapi import FakeLocalAPI, make_node, make_status
from fake_systemd import FakeSystemd

pytestmark = pytest.mark.unit

ACTIVE = {"ActiveState": "active", "SubState": "running"}
UNITS = {"tsproxy@fgpu.service": {"ActiveState": "active", "SubState": "exited"},
         "tsproxy-tailscaled@fgpu.service": ACTIVE, "tsproxy-socks@fgpu.socket": ACTIVE,
         "tsproxy-socks@fgpu.service": ACTIVE, "tsproxy-watch@fgpu.service": ACTIVE,
         "tsproxy-dns.socket": ACTIVE, "tsproxy-dns.service": ACTIVE}
HOSTILE = '<script>alert("x")</script>'


class World:
    def __init__(self, root: Path, conf: TailnetConf, api: FakeLocalAPI) -> None:
        self.root, self.conf, self.api = root, conf, api
        self.stats = Stats("fgpu", "100.121.76.21:11080")

    def units(self, **changed: dict[str, str]) -> None:
        (self.root / "units.json").write_text(json.dumps({**UNITS, **changed}))

    def page(self) -> str:
        return asyncio.run(page.served(self.conf, self.stats, LocalAPI(self.api.socket_path)))

    def status_problem(self) -> str | None:
        """What `tsproxy status` says, gathered as it gathers (the host's view included)."""
        return status.gather([self.conf], {})[0].problem


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    conf_path = tmp_path / "etc/fgpu.conf"
    conf_path.parent.mkdir()
    conf_path.write_text("listen = 100.121.76.21:11080\n")
    (tmp_path / "run/fgpu").mkdir(parents=True)
    for key, value in {"TSPROXY_RUN_DIR": tmp_path / "run", "TSPROXY_STATS_DIR": tmp_path,
                       "TSPROXY_TAILSCALED": "/bin/true"}.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.setattr("tsproxy.systemd.connect", FakeSystemd(tmp_path / "units.json").connect)
    # The host's side of the network as `tsproxy status` sees it on a gateway: whole.
    monkeypatch.setattr("tsproxy.status.network.look", lambda name, with_table: Shape(
        (4, 2), True, (("forward", 6), ("input", 2))))
    peers = [make_node("web", ["100.64.0.7"]), make_node("old", ["100.64.0.9"]),
             make_node("x", ["100.64.0.10"], hostname="ignored")]
    peers[1]["Online"], peers[1]["OS"] = False, "windows"
    peers[2].update(DNSName="", HostName="GPU-Box")  # no MagicDNS name: its HostName
    answer = make_status("gw", ["100.64.0.2"], peers=peers)
    answer["Self"]["KeyExpiry"] = "2027-02-23T10:00:00Z"
    with FakeLocalAPI(tmp_path / "run/fgpu/tailscaled.sock", status=answer) as api:
        built = World(tmp_path, load(str(conf_path)), api)
        built.units()
        yield built


class Text(HTMLParser):
    """The text of the element with each id, and every link."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.by_id: dict[str, str] = {}
        self.links: list[tuple[str, str]] = []
        self._open: list[str | None] = []
        self._href: str | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "meta" or tag == "link":
            return  # void elements: no end tag
        self._open.append(found.get("id"))
        if found.get("id"):
            self.by_id[str(found["id"])] = ""
        if tag == "a":
            self._href = found.get("href")
            self.links.append((str(self._href), ""))

    def handle_endtag(self, tag: str) -> None:
        self._open.pop()
        if tag == "a":
            self._href = None

    def handle_data(self, data: str) -> None:
        for element in self._open:
            if element:
                self.by_id[element] += data
        if self._href is not None:
            href, text = self.links[-1]
            self.links[-1] = (href, text + data)


def problem(html: str) -> str | None:
    return Text(html).by_id.get("problem")


def test_the_page_is_a_local_request() -> None:
    for method in ("GET", "HEAD"):
        for target in ("/", "/?t=1"):
            tr(HttpConnectHandshake, pac_head(method=method, target=target),
               Outcome(b"", local=LocalRequest(method, "/")))
    refused(HttpConnectHandshake, pac_head(method="POST", target="/"), GET_OR_HEAD,
            "method 'POST' not supported for /")


@pytest.mark.parametrize(("changed", "expected"), [
    ({}, "logged out: tsproxy login fgpu"),
    ({"tsproxy-watch@fgpu.service": {"ActiveState": "inactive", "SubState": "dead"}},
     "tsproxy-watch@fgpu.service is inactive: systemctl restart tsproxy@fgpu"),
    ({"tsproxy-tailscaled@fgpu.service": {"ActiveState": "failed", "SubState": "failed",
                                          "Result": "exit-code"}},
     "tsproxy-tailscaled@fgpu.service is failed: systemctl restart tsproxy@fgpu"),
])
def test_the_health_line_is_tsproxy_status_s(world: World, changed: dict[str, Any],
                                             expected: str) -> None:
    world.api.status = {**world.api.status, "BackendState": "NeedsLogin"}
    world.units(**changed)
    assert world.status_problem() == expected
    shown = world.page()
    assert problem(shown) == expected
    assert f'<p id="health" class="bad">Unhealthy: <span id="problem">{escape(expected)}' in shown
    # The same Status judged again by health.py gives the same first problem.
    judged = page.judge(world.conf, world.api.status)
    assert not isinstance(judged, str)
    assert health.first_problem([health.tailscaled_installed(),
                                 *health.instance(world.conf, judged)]) == expected


def test_healthy_and_what_is_left_out(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    assert world.status_problem() is None
    shown = world.page()
    assert '<p id="health" class="ok">Healthy</p>' in shown and problem(shown) is None
    # The host's side of the network is not judged by the page, and it says so: with the
    # veth gone, `tsproxy status` is unhealthy while the page is not, and names what it skips.
    monkeypatch.setattr("tsproxy.status.network.look", lambda name, with_table: Shape(
        (4, 2), False, (("forward", 6),)))
    assert world.status_problem() == ("veth ts-fgpu is gone: systemctl restart "
                                      "tsproxy@fgpu (tsproxy-watch@fgpu "
                                      "does it within seconds)")
    assert '<p id="health" class="ok">Healthy</p>' in world.page()
    assert "except for the host's side of its network (veth, nft table, forwarding " \
           "guard) and who holds a port" in shown
    assert "<code>tsproxy status fgpu</code> on the gateway" in shown


def test_no_systemd_no_verdict(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from tsproxy.errors import TsproxyError

    def down() -> None:
        raise TsproxyError("cannot reach systemd (system bus: No such file or directory): "
                           "tsproxy needs systemd")

    monkeypatch.setattr("tsproxy.systemd.connect", down)
    shown = world.page()
    assert '<p id="health" class="unknown">Not judged: <span id="problem">cannot reach ' \
           "systemd (system bus: No such file or directory)" in shown
    assert "Healthy" not in shown and "Unhealthy" not in shown


def test_peers_with_links_online_state_and_os(world: World) -> None:
    text = Text(world.page())
    assert text.links == [("http://gpu-box.fgpu/", "gpu-box.fgpu"),
                          ("http://old.fgpu/", "old.fgpu"), ("http://web.fgpu/", "web.fgpu")]
    rows = re.findall(r"<tr><td>(.*?)</td><td class=\"(\w+)\">(\w+)</td><td>(.*?)</td>"
                      r"<td>(.*?)</td></tr>", world.page())
    assert [row[1:] for row in rows] == [("ok", "online", "linux", "100.64.0.10"),
                                         ("bad", "offline", "windows", "100.64.0.9"),
                                         ("ok", "online", "linux", "100.64.0.7")]
    assert "<h2>Peers (2 of 3 online)</h2>" in world.page()
    assert "<tr><th>Key expires</th><td>2027-02-23T10:00:00Z</td></tr>" in world.page()


def test_hostile_names_and_os_are_escaped(world: World) -> None:
    answer = make_status("gw", ["100.64.0.2"], peers=[make_node("web", ["100.64.0.7"])])
    peer = next(iter(answer["Peer"].values()))
    peer.update(DNSName=f"{HOSTILE}.tail0000.ts.net.", OS='"><img src=x onerror=alert(1)>')
    answer["Health"] = [HOSTILE]
    answer["CurrentTailnet"] = {"Name": HOSTILE}
    answer["TailscaleIPs"] = ['"><b>']
    world.api.status = answer
    shown = world.page()
    # Not one tag but the page's own: every hostile string is text.
    assert "<script" not in shown and "<img" not in shown and "<b>" not in shown
    assert shown.count(escape(HOSTILE)) == 3  # the peer, tailscaled's warning, the tailnet
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in shown
    # A name that no URL could carry is shown, not linked.
    assert Text(shown).links == []
    # Nothing may run anyway.
    assert "default-src 'none'; style-src 'unsafe-inline'" in shown


def test_a_hostile_conf_name_is_escaped(world: World) -> None:
    stats = Stats("fgpu", '<i>"100.121.76.21:11080"</i>')
    shown = page.render(world.conf, stats, "tailscaled is not running (no socket)", "x")
    assert "<i>" not in shown and "&lt;i&gt;&quot;100.121.76.21:11080&quot;" in shown
    assert '<p class="bad">tailscaled is not running (no socket)</p>' in shown


def test_traffic_figures(world: World) -> None:
    world.stats.started = 1_796_000_000.0
    world.stats.total, world.stats.active, world.stats.tunnels = 12, 3, 2
    world.stats.bytes_up, world.stats.bytes_down = 1234, 5_678_901
    text = Text(world.page())
    assert {key: text.by_id[key] for key in ("connections", "open", "tunnels", "up", "down")} \
        == {"connections": "12", "open": "3", "tunnels": "2", "up": "1,234",
            "down": "5,678,901"}
    assert "<h2>Traffic since 2026-11-30 00:53:20 UTC</h2>" in world.page()


def test_no_script_and_no_external_asset(world: World) -> None:
    shown = world.page()
    assert "<script" not in shown.lower() and "javascript:" not in shown.lower()
    # The only URLs are the peers' links (and the empty icon that stops a favicon fetch).
    assert re.findall(r'(?:src|href)="([^"]*)"', shown) == [
        "data:,", "http://gpu-box.fgpu/", "http://old.fgpu/", "http://web.fgpu/"]
