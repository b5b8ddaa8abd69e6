"""What a client on the home tailnet uses besides a proxy URL: /proxy.pac fetched by curl and
by a real browser (Chromium, in the client namespace, through the PAC to a peer name), and
plain http:// proxying (absolute-form GET) by curl."""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from proxyhost import (
    GATEWAY_TS,
    HTTP_PORT,
    NAME,
    OUTSIDER,
    PROXY,
    PROXY_IP,
    PROXY_PORT,
    TARGET4,
    ProxyWorld,
)

from tsproxy import pac
from tsproxy_generator.config import conf_paths, load_all
from tsproxy_generator.model import Listen

pytestmark = pytest.mark.netns

PAC_URL = f"http://{PROXY}/proxy.pac"
# A second instance, so the PAC shows it covers every conf, not just the one serving it.
LAB_CONF = "listen = 100.80.0.1:1081\nsuffix = lab.internal\ndns_listen = no\n"


@pytest.fixture(scope="module")
def world(world: ProxyWorld) -> Iterator[ProxyWorld]:
    (world.fake.conf_dir / "lab.conf").write_text(LAB_CONF)
    world.start_proxy()
    yield world
    (world.fake.conf_dir / "lab.conf").unlink()


def expected_pac(world: ProxyWorld) -> str:
    """What pac.py makes of the confs for a request that arrived on the proxy's address."""
    confs, errors = load_all(conf_paths(str(world.fake.conf_dir)))
    assert errors == [] and [c.name for c in confs] == ["fgpu", "lab"]
    return pac.served(confs, confs[0], Listen(ipaddress.ip_address(PROXY_IP), PROXY_PORT))


def test_curl_fetches_the_pac(world: ProxyWorld) -> None:
    # (World.curl reads text: CRLF arrives as LF.)
    done = world.curl("-D", "/dev/stderr", PAC_URL)
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("HTTP/1.1 200 OK\n")
    assert "\nContent-Type: application/x-ns-proxy-autoconfig\n" in done.stderr
    assert done.stdout == expected_pac(world)
    assert f'"SOCKS5 {PROXY}; SOCKS {PROXY}; PROXY {PROXY}"' in done.stdout
    assert '"SOCKS5 100.80.0.1:1081; ' in done.stdout  # the other instance, at its address
    line = world.wait_log(r" http .*: GET /proxy\.pac: served")[-1]
    assert line.startswith("client=100.80.0.2:")
    head = world.curl("-I", PAC_URL)
    assert head.returncode == 0, head.stderr
    assert f"Content-Length: {len(done.stdout.encode())}\n" in head.stdout
    world.wait_log(r": HEAD /proxy\.pac: served")


def test_a_conf_change_shows_in_the_next_fetch(world: ProxyWorld) -> None:
    lab = world.fake.conf_dir / "lab.conf"
    lab.write_text(LAB_CONF + "dns_domains = corp.example\n")
    try:
        done = world.curl(PAC_URL)
        assert done.returncode == 0, done.stderr
        assert '"corp.example"' in done.stdout and done.stdout == expected_pac(world)
    finally:
        lab.write_text(LAB_CONF)


def test_clients_outside_allow_clients_are_refused(world: ProxyWorld) -> None:
    done = world.curl("--interface", OUTSIDER, "-D", "/dev/stdout", "-o", "/dev/null",
                      PAC_URL)
    assert done.stdout.startswith("HTTP/1.1 403 Forbidden\n"), (done.stdout, done.stderr)
    world.wait_log(rf"client={OUTSIDER}:\d+ http .*refused \(HTTP 403\): GET /proxy\.pac: "
                   "client address not in allow_clients")


@pytest.mark.parametrize("url", [f"http://web.{NAME}:{HTTP_PORT}/",
                                 f"http://{TARGET4}:{HTTP_PORT}/",
                                 f"http://{TARGET4}.{NAME}:{HTTP_PORT}/"])
def test_plain_http_proxying(world: ProxyWorld, url: str) -> None:
    # No -p: curl sends `GET http://... HTTP/1.1` to the proxy, not CONNECT.
    done = world.curl("-v", "-x", f"http://{PROXY}", url)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{GATEWAY_TS}\n"
    assert f"> GET {url} HTTP/1.1" in done.stderr and "CONNECT" not in done.stderr
    host = url.split("/")[2]
    world.wait_log(rf" http to={re.escape(host)} addr={TARGET4}:{HTTP_PORT} .*: closed")


def test_plain_http_proxying_keeps_the_egress_policy(world: ProxyWorld) -> None:
    done = world.curl("-D", "/dev/stdout", "-o", "/dev/null", "-x", f"http://{PROXY}",
                      f"http://127.0.0.1.{NAME}:{HTTP_PORT}/")
    assert done.stdout.startswith("HTTP/1.1 403 Forbidden\n"), done.stdout


def test_the_pac_needs_no_login(world: ProxyWorld, tmp_path: Path) -> None:
    users = tmp_path / "fgpu.users"
    users.write_text("alice:s3cret\n")
    users.chmod(0o600)
    world.start_proxy(f"users_file = {users}\n")
    try:
        assert world.curl(PAC_URL).stdout == expected_pac(world)
        refused = world.curl("-D", "/dev/stdout", "-o", "/dev/null", "-x", f"http://{PROXY}",
                             f"http://web.{NAME}:{HTTP_PORT}/")
        assert refused.stdout.startswith("HTTP/1.1 407 "), refused.stdout
        logged_in = world.curl("-x", f"http://alice:s3cret@{PROXY}",
                               f"http://web.{NAME}:{HTTP_PORT}/")
        assert logged_in.stdout == f"{GATEWAY_TS}\n", logged_in.stderr
    finally:
        world.start_proxy()


CHROMIUM = "/usr/bin/chromium"
# Quiet and contained: no sync, updates, metrics or first-run traffic, a profile of its own.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--metrics-recording-only", "--disable-default-apps",
                  "--disable-crash-reporter", "--no-default-browser-check"]


def test_chromium_follows_the_pac_to_a_peer_name(world: ProxyWorld, tmp_path: Path) -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run tools/install-deps")
    page = rf"<pre[^>]*>{re.escape(GATEWAY_TS)}\n?</pre>"

    def browse(*flags: str) -> str:
        done = world.client(
            "env", f"HOME={tmp_path}", CHROMIUM, *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}", *flags, "--dump-dom",
            f"http://web.{NAME}:{HTTP_PORT}/", timeout=90)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    # Without the PAC the name means nothing in the client's namespace...
    assert not re.search(page, browse())
    # ...with it, the page is the target's, which answers with the address it saw: the
    # gateway's tailscale0.
    seen = browse(f"--proxy-pac-url={PAC_URL}")
    assert re.search(page, seen), seen
    # It fetched the PAC, then went by SOCKS5 with the name (nothing resolved it locally).
    world.wait_log(r"client=100\.80\.0\.2:\d+ http .*: GET /proxy\.pac: served")
    world.wait_log(rf" socks5 to=web\.{NAME}:{HTTP_PORT} addr={TARGET4}:{HTTP_PORT} ")


@pytest.mark.parametrize("command", [
    ["curl", "-sS", "--max-time", "10", f"http://web.{NAME}:{HTTP_PORT}/"],
    [sys.executable, "-c", "import sys, urllib.request; sys.stdout.write(urllib.request"
     f".urlopen('http://web.{NAME}:{HTTP_PORT}/', timeout=10).read().decode())"],
])
def test_the_env_snippet_runs_one_command_through_the_tailnet(
        world: ProxyWorld, tmp_path: Path, command: list[str]) -> None:
    made = world.fake.tsproxy("client", "--for", "env", NAME)
    assert made.returncode == 0, made.stderr
    snippet = tmp_path / "env.sh"
    snippet.write_text(made.stdout)
    line = " ".join(shlex.quote(word) for word in command)
    through = rf" http to=web\.{NAME}:{HTTP_PORT} addr={TARGET4}:{HTTP_PORT} "
    before = len([x for x in world.log().splitlines() if re.search(through, x)])
    done = world.client("bash", "-euc", f". {snippet}; via_{NAME} {line}; "
                        'echo "after: ${http_proxy-unset} ${ALL_PROXY-unset}"')
    # The name works through the proxy (plain http proxying: absolute-form GET), and the
    # shell itself is left as it was.
    assert done.stdout == f"{GATEWAY_TS}\nafter: unset unset\n", done.stderr
    world.wait_log(through, before + 1)
