"""The status page (`GET /`) on the proxy's port, as a real browser gets it: headless
Chromium in the client namespace takes a screenshot and dumps the DOM, which must show the
health, a peer with its OS, online state and link, and the traffic; the page's link to a
peer then leads there through the PAC. The same client checks as /proxy.pac.

The fake host has no systemd: systemd_bus.py answers on its /run/systemd/private instead,
so the proxy asks unit states with pystemd over D-Bus as it does on a real gateway."""

from __future__ import annotations

import html
import json
import os
import re
import struct
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakehost import REPO
from proxyhost import (
    GATEWAY_TS,
    HTTP_PORT,
    NAME,
    OUTSIDER,
    PROXY,
    TARGET,
    TARGET4,
    ProxyWorld,
)
from test_proxy_pac import CHROMIUM, CHROMIUM_FLAGS

from tsproxy.health import units_of

pytestmark = pytest.mark.netns

PAGE_URL = f"http://{PROXY}/"
PAC_URL = f"http://{PROXY}/proxy.pac"
WINDOW = (900, 700)
RUNNING = {"ActiveState": "active", "SubState": "running"}


def units(world: ProxyWorld, **changed: dict[str, str]) -> None:
    """Every unit of the instance running, but for `changed` (by role)."""
    states = {unit: changed.get(role, RUNNING) for role, unit in units_of(NAME).items()}
    (world.workdir / "units.json").write_text(json.dumps(states))


@pytest.fixture(scope="module")
def world(world: ProxyWorld) -> Iterator[ProxyWorld]:
    # A web server on the peer's port 80, where the page's links lead.
    world.fake.spawn("ip", "netns", "exec", TARGET, sys.executable,
                     str(REPO / "tests/netns/whoami.py"), "0.0.0.0", "80")
    units(world)
    world.fake.spawn(sys.executable, str(REPO / "tests/netns/systemd_bus.py"),
                     "/run/systemd/private", str(world.workdir / "units.json"))
    # tailscaled "installed" (health.tailscaled_installed) where the fake host has it.
    world.start_proxy("allow_clients = 100.80.0.0/24\n",
                      wrapper=("env", f"TSPROXY_TAILSCALED={world.fake.tailscaled}"))
    yield world


def chromium(world: ProxyWorld, tmp_path: Path, url: str, *flags: str) -> str:
    done = world.client(
        "env", f"HOME={tmp_path}", CHROMIUM, *CHROMIUM_FLAGS,
        f"--user-data-dir={tmp_path / 'profile'}", *flags, url, timeout=90)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def pixels(png: bytes) -> tuple[int, int, set[bytes]]:
    """Width, height and the distinct pixels of an 8-bit RGB or RGBA PNG (what Chromium
    writes), decoded here: no imaging library needed."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", png[:16]
    at, idat, chunks = 8, b"", dict[bytes, bytes]()
    while at < len(png):
        length, kind = struct.unpack(">I4s", png[at:at + 8])
        data = png[at + 8:at + 8 + length]
        idat += data if kind == b"IDAT" else b""
        chunks.setdefault(kind, data)
        at += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert depth == 8 and colour in (2, 6), (depth, colour)
    size = 4 if colour == 6 else 3
    raw, stride = zlib.decompress(idat), width * size
    rows, previous = [], bytearray(stride)
    for y in range(height):
        line = raw[y * (stride + 1):(y + 1) * (stride + 1)]
        kind, row = line[0], bytearray(line[1:])
        for i in range(stride):
            left = row[i - size] if i >= size else 0
            up, corner = previous[i], previous[i - size] if i >= size else 0
            if kind == 1:
                row[i] = (row[i] + left) & 0xFF
            elif kind == 2:
                row[i] = (row[i] + up) & 0xFF
            elif kind == 3:
                row[i] = (row[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                row[i] = (row[i] + (left if pa <= pb and pa <= pc else up if pb <= pc
                                    else corner)) & 0xFF
        rows.append(bytes(row))
        previous = row
    found = {row[i:i + size] for row in rows for i in range(0, stride, size)}
    return width, height, found


def text_of(dom: str, element: str) -> str:
    match = re.search(rf'id="{element}"[^>]*>(.*?)</', dom, re.DOTALL)
    assert match, f"no #{element} in:\n{dom}"
    return html.unescape(match[1])


def test_chromium_shows_the_page(world: ProxyWorld, tmp_path: Path) -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run tools/install-deps")
    for _ in range(3):  # known traffic
        done = world.curl("-x", f"socks5h://{PROXY}", f"http://web.{NAME}:{HTTP_PORT}/")
        assert done.stdout == f"{GATEWAY_TS}\n", done.stderr

    shot = tmp_path / "page.png"
    chromium(world, tmp_path, PAGE_URL, f"--window-size={WINDOW[0]},{WINDOW[1]}",
             f"--screenshot={shot}")
    width, height, found = pixels(shot.read_bytes())
    assert (width, height) == WINDOW
    assert len(found) > 10, found  # text, rules and colours, not a blank window

    dom = chromium(world, tmp_path, PAGE_URL, "--dump-dom")
    assert dom.count("<script") == 0
    # Every unit up (as systemd_bus.py tells), tailscaled Running: healthy, with what the
    # page cannot see named.
    assert '<p id="health" class="ok">Healthy</p>' in dom, dom
    assert "except for the host's side of its network" in dom
    # The peer web: its link, online, its OS and address.
    row = re.search(r'<tr><td><a href="http://web\.fgpu/">web\.fgpu</a></td>'
                    r'<td class="ok">online</td><td>linux</td><td>([^<]*)</td></tr>', dom)
    assert row and row[1] == f"{TARGET4}, fd7a:115c:a1e0::2", dom
    assert "<h2>Peers (4 of 4 online)</h2>" in dom
    # The traffic: the three tunnels and the page's own fetches so far (the screenshot's,
    # and this one, still open; Chromium may hold a spare connection too), their bytes
    # counted as they ended.
    connections = int(text_of(dom, "connections").replace(",", ""))
    assert connections >= 5
    assert int(text_of(dom, "open")) >= 1
    assert int(text_of(dom, "down").replace(",", "")) > 3 * len(f"{GATEWAY_TS}\n")
    stats = world.wait_stats(lambda s: s["total"] >= connections)
    assert stats["ended"].get("closed", 0) >= 3 and stats["ended"].get("page", 0) >= 1
    world.wait_log(r"client=100\.80\.0\.2:\d+ http .*: GET /: served \(\d+ bytes\)")

    # The page's own link to the peer, followed with the PAC: the peer's answer (the
    # address it saw: the gateway's tailscale0).
    link = re.search(r'<a href="(http://web\.fgpu/)">', dom)
    assert link
    seen = chromium(world, tmp_path, link[1], f"--proxy-pac-url={PAC_URL}", "--dump-dom")
    assert re.search(rf"<pre[^>]*>{re.escape(GATEWAY_TS)}\n?</pre>", seen), seen
    world.wait_log(rf" socks5 to=web\.{NAME}:80 addr={TARGET4}:80 .*: closed")


def test_the_verdict_follows_the_units(world: ProxyWorld) -> None:
    try:
        units(world, watch={"ActiveState": "failed", "SubState": "failed",
                            "Result": "exit-code"})
        page = world.curl(PAGE_URL).stdout
        assert text_of(page, "problem") == \
            f"tsproxy-watch@{NAME}.service is failed: systemctl restart tsproxy@{NAME}", page
        units(world, tailscaled={"ActiveState": "inactive", "SubState": "dead"})
        page = world.curl(PAGE_URL).stdout
        assert text_of(page, "problem") == (f"tsproxy-tailscaled@{NAME}.service is inactive: "
                                            f"systemctl restart tsproxy@{NAME}"), page
    finally:
        units(world)
    assert '<p id="health" class="ok">Healthy</p>' in world.curl(PAGE_URL).stdout


def test_the_page_obeys_allow_clients(world: ProxyWorld) -> None:
    done = world.curl("--interface", OUTSIDER, "-D", "/dev/stdout", "-o", "/dev/null",
                      PAGE_URL)
    assert done.stdout.startswith("HTTP/1.1 403 Forbidden\n"), (done.stdout, done.stderr)
    world.wait_log(rf"client={OUTSIDER}:\d+ http .*refused \(HTTP 403\): GET /: "
                   "client address not in allow_clients")


def test_other_requests_keep_their_answers(world: ProxyWorld) -> None:
    def code(*args: str) -> str:
        return world.curl("-o", "/dev/null", "-w", "%{http_code}", *args).stdout

    page = world.curl("-D", "/dev/stderr", PAGE_URL)
    assert "\nContent-Type: text/html; charset=utf-8\n" in page.stderr
    head = world.curl("-I", PAGE_URL)
    assert head.stdout.startswith("HTTP/1.1 200 OK\n") and "Content-Length: " in head.stdout
    assert code("-X", "POST", PAGE_URL) == "405"
    assert code(f"http://{PROXY}/index.html") == "404"
    assert code(f"http://{PROXY}/favicon.ico") == "404"
