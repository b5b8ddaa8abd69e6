"""Who may use the proxy and where it may go: egress refusals with their exact RFC answers,
client networks, the users file and Tailscale identities (through a fake LocalAPI)."""

from __future__ import annotations

from pathlib import Path

import pytest
from proxyhost import (
    ALICE,
    CLOSED_PORT,
    ECHO_PORT,
    GATEWAY,
    GATEWAY_TS,
    HTTP_PORT,
    NAME,
    OFF_TAILNET,
    OPS,
    OUTSIDER,
    PROXY,
    SILENT_PORT,
    STRANGER,
    TARGET4,
    UNREACHABLE_PORT,
    VETH_HOST,
    ProxyWorld,
)

pytestmark = pytest.mark.netns


@pytest.fixture
def default(world: ProxyWorld) -> ProxyWorld:
    world.start_proxy("", "--dial-timeout", "1")
    return world


# -- egress ---------------------------------------------------------------------------------

REFUSED_BY_POLICY = [
    f"127.0.0.1.{NAME}",  # rebinding onto the gateway itself
    "127.0.0.1", "0.0.0.0", "::1", "::ffff:127.0.0.1", "169.254.1.1", "224.0.0.1",
    "100.100.100.100", f"quad.{NAME}",  # Tailscale's DNS address, literally and by name
    "fd7a:115c:a1e0::53",
    VETH_HOST, f"{VETH_HOST}.{NAME}", "10.200.99.1",  # the veth pool
]


@pytest.mark.parametrize("host", REFUSED_BY_POLICY)
def test_egress_policy_refusals_are_rep_2_and_403(default: ProxyWorld, host: str) -> None:
    assert default.raw("socks5", host, HTTP_PORT)["rep"] == 2
    assert default.raw("http", host, HTTP_PORT)["status"] == 403
    line = default.wait_log(rf"to=\[?{host}\]?:{HTTP_PORT} .*refused \(HTTP 403\)")[-1]
    assert "is not allowed (see allow_egress)" in line


OWN_ADDRESSES = [GATEWAY_TS, "fd7a:115c:a1e0::1", f"{GATEWAY_TS}.{NAME}", f"gw.{NAME}"]


@pytest.mark.parametrize("host", OWN_ADDRESSES)
def test_the_namespaces_own_addresses_are_refused(default: ProxyWorld, host: str) -> None:
    # A listener there (as tailscaled's peer API is) answers from inside the namespace...
    inside = default.fake.run("ip", "netns", "exec", GATEWAY, "curl", "-sS", "--max-time",
                              "5", f"http://{GATEWAY_TS}:{HTTP_PORT}/", check=False)
    assert inside.returncode == 0, inside.stderr
    # ... and is refused through the proxy, by address and by name.
    assert default.raw("socks5", host, HTTP_PORT)["rep"] == 2
    assert default.raw("http", host, HTTP_PORT)["status"] == 403
    line = default.wait_log(rf"to=\[?{host}\]?:{HTTP_PORT} .*refused \(HTTP 403\)")[-1]
    assert "is not allowed (see allow_egress)" in line
    url_host = f"[{host}]" if ":" in host else host
    done = default.curl("-g", "-x", f"socks5h://{PROXY}", f"http://{url_host}:{HTTP_PORT}/")
    assert done.returncode == 97 and "(2)" in done.stderr  # "connection not allowed"


def test_an_address_added_after_the_start_is_refused_too(default: ProxyWorld) -> None:
    later = "100.70.9.9"  # what a re-login could bring
    assert default.raw("socks5", GATEWAY_TS, HTTP_PORT)["rep"] == 2  # the proxy is serving
    default.fake.run("ip", "-n", GATEWAY, "addr", "add", f"{later}/16", "dev", "tailscale0")
    try:
        assert default.raw("socks5", later, HTTP_PORT)["rep"] == 2
        assert default.raw("socks5", f"{later}.{NAME}", HTTP_PORT)["rep"] == 2
    finally:
        default.fake.run("ip", "-n", GATEWAY, "addr", "del", f"{later}/16", "dev", "tailscale0")
    # Gone again, it is an address like any other: nobody answers there.
    assert default.raw("socks5", later, HTTP_PORT)["rep"] != 2


def test_allow_egress_opens_the_namespaces_own_address(world: ProxyWorld) -> None:
    world.start_proxy(f"allow_egress = {GATEWAY_TS}/32\n")
    assert world.raw("socks5", GATEWAY_TS, HTTP_PORT)["rep"] == 0
    assert world.raw("socks5", "fd7a:115c:a1e0::1", HTTP_PORT)["rep"] == 2


def test_only_tailscale0_is_reachable(default: ProxyWorld) -> None:
    # The gateway itself reaches the fake host's address by its default route (the veth)...
    seen = default.fake.run("ip", "netns", "exec", GATEWAY, "curl", "-sS", "--max-time", "5",
                            f"http://{OFF_TAILNET}:{HTTP_PORT}/", check=False)
    assert seen.returncode == 0, seen.stderr
    # ... the proxy cannot: its sockets are bound to tailscale0, which has no route there.
    assert default.raw("socks5", OFF_TAILNET, HTTP_PORT)["rep"] == 3
    assert default.raw("http", OFF_TAILNET, HTTP_PORT)["status"] == 502
    line = default.wait_log(rf"to={OFF_TAILNET}:{HTTP_PORT} .*refused \(HTTP 502\)")[-1]
    assert line.endswith(f"dial failed: {OFF_TAILNET}: no route through tailscale0")


def test_the_bound_socket_holds_even_when_a_route_says_otherwise(default: ProxyWorld) -> None:
    # A route through tailscale0 makes the proxy try; a more specific one through the veth
    # is what an unbound socket would take. The bound one still only uses tailscale0.
    routes = ["198.51.100.0/24 dev tailscale0", f"{OFF_TAILNET}/32 via {VETH_HOST} dev eth0"]
    for route in routes:
        default.fake.run("ip", "-n", GATEWAY, "route", "add", *route.split())
    try:
        seen = default.fake.run("ip", "netns", "exec", GATEWAY, "curl", "-sS", "--max-time",
                                "5", f"http://{OFF_TAILNET}:{HTTP_PORT}/", check=False)
        assert seen.returncode == 0, seen.stderr
        assert default.raw("socks5", OFF_TAILNET, HTTP_PORT)["rep"] in (4, 6)
    finally:
        for route in routes:
            default.fake.run("ip", "-n", GATEWAY, "route", "del", *route.split())


@pytest.mark.parametrize("host, port, rep, status, text", [
    (TARGET4, CLOSED_PORT, 5, 502, "Connection refused"),
    (TARGET4, UNREACHABLE_PORT, 4, 502, "No route to host"),
    (TARGET4, SILENT_PORT, 6, 504, "no answer within 1 s"),
    (f"nosuch.{NAME}", HTTP_PORT, 4, 502, "no node 'nosuch'"),
    (f"a.web.{NAME}", HTTP_PORT, 4, 502, "no such name"),
    ("down.test", HTTP_PORT, 1, 502, "SERVFAIL"),
])
def test_dial_and_name_failures_get_their_own_codes(default: ProxyWorld, host: str, port: int,
                                                     rep: int, status: int, text: str) -> None:
    assert default.raw("socks5", host, port)["rep"] == rep
    assert default.raw("http", host, port)["status"] == status
    assert text in default.wait_log(rf"to={host}:{port} .*refused \(HTTP {status}\)")[-1]


def test_allow_egress_opens_a_refused_network(world: ProxyWorld) -> None:
    world.start_proxy("allow_egress = 100.100.100.100/32\n")
    result = world.raw("socks5", "100.100.100.100", ECHO_PORT, "--send", "quad")
    assert result["rep"] == 0 and result["tunnel"] == "quad"
    # The other refusals stand, and tailscale0 stays the only way out.
    assert world.raw("socks5", "fd7a:115c:a1e0::53", ECHO_PORT)["rep"] == 2


def test_allow_egress_never_opens_another_interface(world: ProxyWorld) -> None:
    world.start_proxy("allow_egress = 127.0.0.0/8, 198.51.100.0/24\n")
    assert world.raw("socks5", f"127.0.0.1.{NAME}", HTTP_PORT)["rep"] == 3
    assert world.raw("socks5", OFF_TAILNET, HTTP_PORT)["rep"] == 3


# -- client networks ------------------------------------------------------------------------

def test_clients_outside_allow_clients_are_refused(default: ProxyWorld) -> None:
    assert default.raw("socks5", TARGET4, HTTP_PORT, "--source", OUTSIDER)["rep"] == 2
    assert default.raw("http", TARGET4, HTTP_PORT, "--source", OUTSIDER)["status"] == 403
    assert "client address not in allow_clients" in default.wait_log(
        rf"client={OUTSIDER}:.*refused \(HTTP 403\)")[-1]
    done = default.curl("--interface", OUTSIDER, "-x", f"socks5h://{PROXY}",
                        f"http://web.{NAME}:{HTTP_PORT}/")
    assert done.returncode == 97 and "(2)" in done.stderr  # "connection not allowed"


def test_allow_clients_from_the_conf(world: ProxyWorld) -> None:
    world.start_proxy("allow_clients = 192.0.2.0/24\n")
    assert world.raw("socks5", TARGET4, HTTP_PORT, "--source", OUTSIDER)["rep"] == 0
    assert world.raw("socks5", TARGET4, HTTP_PORT, "--source", ALICE)["rep"] == 2


# -- users file -----------------------------------------------------------------------------

@pytest.fixture
def users(world: ProxyWorld, tmp_path: Path) -> Path:
    path = tmp_path / "fgpu.users"
    path.write_text("# who may log in\nalice:s3cret\n\nbob:pa:ss word\n")
    path.chmod(0o600)
    world.start_proxy(f"users_file = {path}\n")
    return path


@pytest.mark.parametrize("proxy", [f"socks5h://{PROXY}", f"http://{PROXY}"])
@pytest.mark.parametrize("login", ["alice:s3cret", "bob:pa:ss word"])
def test_curl_logs_in(world: ProxyWorld, users: Path, proxy: str, login: str) -> None:
    tunnel = ["-p"] if proxy.startswith("http") else []
    done = world.curl(*tunnel, "--proxy-user", login, "-x", proxy,
                      f"http://web.{NAME}:{HTTP_PORT}/")
    assert done.returncode == 0, done.stderr
    user = login.split(":")[0]
    assert f" user={user} " in world.wait_log(rf"user={user} to=web\.{NAME}")[-1]


@pytest.mark.parametrize("login", ["alice:wrong", "carol:s3cret", "alice:", "alice:s3cret "])
def test_wrong_logins_are_refused(world: ProxyWorld, users: Path, login: str) -> None:
    assert world.raw("socks5", TARGET4, HTTP_PORT, "--user", login)["login"] == "0101"
    answer = world.raw("http", TARGET4, HTTP_PORT, "--user", login)
    assert answer["status"] == 407
    assert 'Proxy-Authenticate: Basic realm="tsproxy"' in answer["head"]
    done = world.curl("--proxy-user", login, "-x", f"socks5h://{PROXY}",
                      f"http://web.{NAME}:{HTTP_PORT}/")
    assert done.returncode != 0
    # The log names the user (escaped) but never the password.
    assert "s3cret" not in world.log() and "wrong" not in world.log()


def test_no_login_is_refused(world: ProxyWorld, users: Path) -> None:
    assert world.raw("socks5", TARGET4, HTTP_PORT)["method"] == "05ff"
    assert world.raw("http", TARGET4, HTTP_PORT)["status"] == 407


def test_refused_clients_are_never_asked_for_a_password(world: ProxyWorld, users: Path) -> None:
    # A login answer would tell an outsider whether the password was right.
    done = world.curl("--interface", OUTSIDER, "--proxy-user", "alice:s3cret",
                      "-x", f"socks5h://{PROXY}", f"http://web.{NAME}:{HTTP_PORT}/")
    assert done.returncode == 97 and "(2)" in done.stderr
    answer = world.raw("socks5", TARGET4, HTTP_PORT, "--user", "alice:s3cret",
                       "--source", OUTSIDER)
    assert answer["method"] == "05ff" and "login" not in answer


def test_sighup_reloads_the_users_file(world: ProxyWorld, users: Path) -> None:
    assert world.raw("socks5", TARGET4, HTTP_PORT, "--user", "alice:s3cret")["rep"] == 0
    users.write_text("alice:n3w\n")
    world.fake.run("kill", "-HUP", str(world.proxy_pid()))
    world.wait_log("users file reloaded: 1 logins")
    assert world.raw("socks5", TARGET4, HTTP_PORT, "--user", "alice:n3w")["rep"] == 0
    assert world.raw("socks5", TARGET4, HTTP_PORT, "--user", "alice:s3cret")["login"] == "0101"
    # A file others can read is refused; the logins in force stay.
    users.chmod(0o644)
    world.fake.run("kill", "-HUP", str(world.proxy_pid()))
    world.wait_log("conf not reloaded, keeping the old one: .*users_file: .*chmod 600")
    assert world.raw("socks5", TARGET4, HTTP_PORT, "--user", "alice:n3w")["rep"] == 0


# -- Tailscale identities -------------------------------------------------------------------

@pytest.mark.parametrize("allowed, client, rep", [
    ("alice@example.com", ALICE, 0),
    ("alice@example.com", OPS, 2),  # a tagged node is its tags, not its creator
    ("alice@example.com", STRANGER, 2),  # unknown to the host's tailscaled
    ("tag:ops", OPS, 0),
    ("tag:ops", ALICE, 2),
    ("tag:ops, alice@example.com", ALICE, 0),
])
def test_identity_allow_list(world: ProxyWorld, allowed: str, client: str, rep: int) -> None:
    world.start_proxy(f"allow_identities = {allowed}\n")
    assert world.raw("socks5", TARGET4, ECHO_PORT, "--source", client)["rep"] == rep
    assert world.raw("http", TARGET4, ECHO_PORT, "--source", client)["status"] == \
        (200 if rep == 0 else 403)
    line = world.wait_log(rf"client={client}:.* http ")[-1]
    if client == ALICE:
        assert " identity=alice@example.com " in line
    elif client == OPS:
        assert " identity=tag:ops " in line
    else:
        assert "not a node of the host's tailnet" in line


def test_identity_check_denies_when_tailscaled_is_down(world: ProxyWorld) -> None:
    world.start_proxy("allow_identities = alice@example.com\n"
                      "identity_socket = /run/nothing/tailscaled.sock\n")
    assert world.raw("socks5", TARGET4, ECHO_PORT, "--source", ALICE)["rep"] == 2
    assert "tailscaled is not running" in world.wait_log(rf"client={ALICE}:.*refused")[-1]
