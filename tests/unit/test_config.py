"""Every key, good and bad values, and the exact line a user sees for each mistake."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tsproxy_generator.config import derived_subnet, load, load_all
from tsproxy_generator.model import ConfigError, Forward, TailnetConf

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.unit

LISTEN = "listen = 100.121.76.21:11080\n"


def write(directory: Path, name: str, text: str) -> str:
    path = directory / name
    path.write_text(text)
    return str(path)


def error_of(directory: Path, text: str, name: str = "fgpu.conf") -> str:
    with pytest.raises(ConfigError) as caught:
        load(write(directory, name, text))
    return str(caught.value).replace(f"{directory}/", "")


def test_only_listen_derives_everything_else(tmp_path: Path) -> None:
    conf = load(write(tmp_path, "fgpu.conf", LISTEN))
    assert conf == TailnetConf(
        name="fgpu", path=str(tmp_path / "fgpu.conf"), listen=conf.listen, suffix="fgpu",
        autostart=True, authkey_file=None, login_server=None, accept_routes=True,
        hostname="tsproxy-fgpu", veth_subnet=derived_subnet("fgpu"), tailscaled_args=(),
        allow_clients=tuple(map(ipaddress.ip_network, ["100.64.0.0/10", "fd7a:115c:a1e0::/48",
                                                       "127.0.0.0/8", "::1/128"])),
        users_file=None, allow_identities=(), identity_socket="/run/tailscale/tailscaled.sock",
        allow_egress=(), max_connections=20000, max_connections_per_client=2000,
        dns_listen=conf.dns_listen, dns_domains=(), forwards=())
    assert str(conf.listen) == "100.121.76.21:11080"
    assert str(conf.dns_listen) == "100.121.76.21:53"
    assert conf.netns == "ts-fgpu"
    assert conf.veth_subnet.subnet_of(ipaddress.IPv4Network("10.200.0.0/16"))
    assert (conf.veth_host.ip, conf.veth_ns.ip) == (conf.veth_subnet[1], conf.veth_subnet[2])


def test_every_key_set(tmp_path: Path) -> None:
    key = write(tmp_path, "fgpu.key", "tskey-auth-xxxx\n")
    users = write(tmp_path, "fgpu.users", "alice:secret\n")
    os.chmod(key, 0o600)
    os.chmod(users, 0o400)
    conf = load(write(tmp_path, "fgpu.conf", f"""
# a comment
listen = [fd7a:115c:a1e0::1]:1080
suffix = FarmGPU.Example.
autostart = no
authkey_file = {key}
login_server = https://headscale.example.org:8443/
accept_routes = off
hostname = demon-fgpu
veth_subnet = 10.99.0.8/30
tailscaled_args = --verbose=1, --port=41642
allow_clients = 100.101.102.103/32, 10.0.0.0/8
users_file = {users}
allow_identities = alice@example.com, tag:ops
identity_socket = /run/tailscale-home/tailscaled.sock
allow_egress = 192.168.7.0/24
max_connections = 100
max_connections_per_client = 10
dns_listen = [fd7a:115c:a1e0::1]:5353
dns_domains = Corp.Example., internal
"""))
    assert str(conf.listen) == "[fd7a:115c:a1e0::1]:1080"
    assert conf.suffix == "farmgpu.example"
    assert (conf.autostart, conf.accept_routes) == (False, False)
    assert conf.authkey_file == key
    assert conf.login_server == "https://headscale.example.org:8443/"
    assert conf.hostname == "demon-fgpu"
    assert str(conf.veth_subnet) == "10.99.0.8/30"
    assert conf.tailscaled_args == ("--verbose=1", "--port=41642")
    assert [str(n) for n in conf.allow_clients] == ["100.101.102.103/32", "10.0.0.0/8"]
    assert conf.users_file == users
    assert conf.allow_identities == ("alice@example.com", "tag:ops")
    assert conf.identity_socket == "/run/tailscale-home/tailscaled.sock"
    assert [str(n) for n in conf.allow_egress] == ["192.168.7.0/24"]
    assert (conf.max_connections, conf.max_connections_per_client) == (100, 10)
    assert str(conf.dns_listen) == "[fd7a:115c:a1e0::1]:5353"
    assert conf.dns_domains == ("corp.example", "internal")


def test_dns_can_be_turned_off(tmp_path: Path) -> None:
    assert load(write(tmp_path, "fgpu.conf", LISTEN + "dns_listen = no\n")).dns_listen is None


@pytest.mark.parametrize("text, message", [
    ("", "fgpu.conf: listen: is missing (it has no default)"),
    ("listen = 100.121.76.21\n", 'fgpu.conf: listen: "100.121.76.21" is not IP:PORT (IPv6 as [ADDR]:PORT)'),
    ("listen = 100.121.76.21:70000\n", 'fgpu.conf: listen: port "70000" is not in 1..65535'),
    ("listen = 100.121.76.21:0\n", 'fgpu.conf: listen: port "0" is not in 1..65535'),
    ("listen = 300.1.1.1:80\n", 'fgpu.conf: listen: "300.1.1.1" is not an IP address'),
    ("listen = fd7a::1:80\n", 'fgpu.conf: listen: "fd7a::1:80" is not IP:PORT (IPv6 as [ADDR]:PORT)'),
    ("listen = demon:80\n", 'fgpu.conf: listen: "demon:80" is not IP:PORT (IPv6 as [ADDR]:PORT)'),
    ("listen = 1.2.3.4:80, 1.2.3.4:81\n", "fgpu.conf: listen: takes one value, not a comma-separated list"),
    (LISTEN + "suffix = fg_pu\n", 'fgpu.conf: suffix: "fg_pu" is not a DNS suffix (labels of a-z, 0-9 and -)'),
    (LISTEN + "suffix = -fgpu\n", 'fgpu.conf: suffix: "-fgpu" is not a DNS suffix (labels of a-z, 0-9 and -)'),
    (LISTEN + "suffix = a..b\n", 'fgpu.conf: suffix: "a..b" is not a DNS suffix (labels of a-z, 0-9 and -)'),
    (LISTEN + "autostart = maybe\n", 'fgpu.conf: autostart: "maybe" is not a boolean (yes or no)'),
    (LISTEN + "accept_routes = 2\n", 'fgpu.conf: accept_routes: "2" is not a boolean (yes or no)'),
    (LISTEN + "authkey_file = fgpu.key\n", 'fgpu.conf: authkey_file: "fgpu.key" is not an absolute path'),
    (LISTEN + "authkey_file = /nonexistent/fgpu.key\n", 'fgpu.conf: authkey_file: "/nonexistent/fgpu.key" does not exist'),
    (LISTEN + "login_server = headscale.example.org\n", 'fgpu.conf: login_server: "headscale.example.org" is not an http:// or https:// URL'),
    (LISTEN + "hostname = demon.fgpu\n", 'fgpu.conf: hostname: "demon.fgpu" is not a host name (1-63 of a-z, 0-9 and -)'),
    (LISTEN + "veth_subnet = 10.99.0.8/29\n", 'fgpu.conf: veth_subnet: "10.99.0.8/29" is not a /30'),
    (LISTEN + "veth_subnet = 10.99.0.9/30\n", 'fgpu.conf: veth_subnet: "10.99.0.9/30" is not an IPv4 network such as 10.200.0.4/30'),
    (LISTEN + "veth_subnet = fd00::/126\n", 'fgpu.conf: veth_subnet: "fd00::/126" is not an IPv4 network such as 10.200.0.4/30'),
    (LISTEN + "tailscaled_args = --socket=/tmp/x\n", 'fgpu.conf: tailscaled_args: "--socket=/tmp/x" is set by tsproxy for each instance'),
    (LISTEN + "tailscaled_args = --statedir=/tmp\n", 'fgpu.conf: tailscaled_args: "--statedir=/tmp" is set by tsproxy for each instance'),
    (LISTEN + 'tailscaled_args = "--verbose 1"\n', 'fgpu.conf: tailscaled_args: "--verbose 1" is not a single --flag or --flag=value (no spaces or quotes)'),
    (LISTEN + "tailscaled_args = verbose\n", 'fgpu.conf: tailscaled_args: "verbose" is not a single --flag or --flag=value (no spaces or quotes)'),
    (LISTEN + "tailscaled_args = --x=a\\b\n", 'fgpu.conf: tailscaled_args: "--x=a\\b" is not a single --flag or --flag=value (no spaces or quotes)'),
    (LISTEN + "allow_clients = 100.64.0.1/10\n", 'fgpu.conf: allow_clients: "100.64.0.1/10" is not a network in CIDR form (host bits must be zero)'),
    (LISTEN + "allow_clients = everyone\n", 'fgpu.conf: allow_clients: "everyone" is not a network in CIDR form (host bits must be zero)'),
    (LISTEN + "allow_identities = alice\n", 'fgpu.conf: allow_identities: "alice" is not a login name (user@example.com) or a tag (tag:name)'),
    (LISTEN + "allow_identities = tag:\n", 'fgpu.conf: allow_identities: "tag:" is not a login name (user@example.com) or a tag (tag:name)'),
    (LISTEN + "identity_socket = run/ts.sock\n", 'fgpu.conf: identity_socket: "run/ts.sock" is not an absolute path'),
    (LISTEN + "allow_egress = 10.0.0.1/8\n", 'fgpu.conf: allow_egress: "10.0.0.1/8" is not a network in CIDR form (host bits must be zero)'),
    (LISTEN + "max_connections = 0\n", 'fgpu.conf: max_connections: the value "0" is too small.'),
    (LISTEN + "max_connections = lots\n", 'fgpu.conf: max_connections: "lots" is not an integer'),
    (LISTEN + "max_connections_per_client = 1e9\n", 'fgpu.conf: max_connections_per_client: "1e9" is not an integer'),
    (LISTEN + "dns_listen = 53\n", 'fgpu.conf: dns_listen: "53" is not IP:PORT (IPv6 as [ADDR]:PORT)'),
    (LISTEN + "dns_listen = 1.2.3.4:53, 1.2.3.5:53\n", "fgpu.conf: dns_listen: takes one value, not a comma-separated list"),
    (LISTEN + "dns_domains = corp.example, a b\n", 'fgpu.conf: dns_domains: "a b" is not a DNS suffix (labels of a-z, 0-9 and -)'),
    (LISTEN + "users_file = /nonexistent/users\n", 'fgpu.conf: users_file: "/nonexistent/users" does not exist'),
    (LISTEN + "port = 11080\n", "fgpu.conf: port: unknown key (see tsproxy.d(5))"),
    (LISTEN + "[fgpu]\nsuffix = fgpu\n", "fgpu.conf: fgpu: unknown section (see tsproxy.d(5))"),
    (LISTEN + "listen = 1.2.3.4:1\n", "fgpu.conf: listen: given twice (line 2)"),
    (LISTEN + "[a]\n[a]\n", "fgpu.conf: section [a] given twice (line 3)"),
    (LISTEN + "just words\n", "fgpu.conf: line 2: Invalid line ('just words') (matched as neither section nor keyword)"),
    (LISTEN + "suffix = $HOME\n", 'fgpu.conf: suffix: "$HOME" is not a DNS suffix (labels of a-z, 0-9 and -)'),
    (LISTEN + "forward = 15432\n", 'fgpu.conf: forward: "15432" is not PORT[/tcp|/udp]=HOST:PORT (IPv6 as [ADDR]:PORT)'),
    (LISTEN + "forward = 15432/sctp=db:5432\n", 'fgpu.conf: forward: "15432/sctp=db:5432" is not PORT[/tcp|/udp]=HOST:PORT (IPv6 as [ADDR]:PORT)'),
    (LISTEN + "forward = 15432=fd7a::1:5432\n", 'fgpu.conf: forward: "15432=fd7a::1:5432" is not PORT[/tcp|/udp]=HOST:PORT (IPv6 as [ADDR]:PORT)'),
    (LISTEN + "forward = 15432=[db]:5432\n", 'fgpu.conf: forward: "15432=[db]:5432": "db" is not a host name or IP address'),
    (LISTEN + "forward = 0=db:5432\n", 'fgpu.conf: forward: "0=db:5432": port "0" is not in 1..65535'),
    (LISTEN + "forward = 15432=db:65536\n", 'fgpu.conf: forward: "15432=db:65536": port "65536" is not in 1..65535'),
    (LISTEN + "forward = 15432=[fd7a::1::2]:5432\n", 'fgpu.conf: forward: "15432=[fd7a::1::2]:5432": "fd7a::1::2" is not a host name or IP address'),
    (LISTEN + "forward = 15432=db.é:5432\n", 'fgpu.conf: forward: "15432=db.é:5432": "db.é" is not a host name or IP address'),
    (LISTEN + "forward = 15432=db:5432, 15432/tcp=pg:5432\n", 'fgpu.conf: forward: "15432/tcp=pg:5432": 15432/tcp is forwarded already ("15432/tcp=db:5432")'),
    (LISTEN + "forward = 11080=db:5432\n", 'fgpu.conf: forward: "11080/tcp=db:5432": port 11080 is the proxy\'s own (listen)'),
    (LISTEN + "forward = 11080/udp=db:53\n", 'fgpu.conf: forward: "11080/udp=db:53": port 11080 is the proxy\'s own (listen)'),
    (LISTEN + "forward = 53/udp=100.64.0.2:53\n", 'fgpu.conf: forward: "53/udp=100.64.0.2:53": port 53 is the DNS responder\'s (dns_listen)'),
])
def test_bad_values(tmp_path: Path, text: str, message: str) -> None:
    assert error_of(tmp_path, text) == message


def test_interpolation_is_off(tmp_path: Path) -> None:
    conf = load(write(tmp_path, "fgpu.conf", LISTEN + "hostname = a-%(listen)s\n".replace("%(listen)s", "b")))
    assert conf.hostname == "a-b"
    assert error_of(tmp_path, LISTEN + "suffix = %(hostname)s\n") == \
        'fgpu.conf: suffix: "%(hostname)s" is not a dns suffix (labels of a-z, 0-9 and -)'.replace("dns", "DNS")


@pytest.mark.parametrize("name", ["Fgpu.conf", "1fgpu.conf", "fgpu-.conf", "f_gpu.conf",
                                  "abcdefghijklm.conf", ".fgpu.conf", "fg.pu.conf"])
def test_bad_instance_names(tmp_path: Path, name: str) -> None:
    stem = name[: -len(".conf")]
    assert error_of(tmp_path, LISTEN, name) == (
        f'{name}: instance name "{stem}" must be 1-12 of a-z, 0-9 and -, starting with a letter')


def test_longest_name_fits_an_interface(tmp_path: Path) -> None:
    conf = load(write(tmp_path, "abcdefghijkl.conf", LISTEN))
    assert len(conf.netns) == 15


def test_unreadable_and_binary_files(tmp_path: Path) -> None:
    assert error_of(tmp_path, "") .startswith("fgpu.conf: listen")
    path = tmp_path / "bin.conf"
    path.write_bytes(b"listen = \xff\xfe\n")
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        load(str(path))
    with pytest.raises(ConfigError, match="No such file or directory"):
        load(str(tmp_path / "gone.conf"))


def test_derived_subnets_are_stable_and_distinct() -> None:
    assert derived_subnet("fgpu") == derived_subnet("fgpu")
    names = [f"t{i}" for i in range(100)]
    assert len({derived_subnet(n) for n in names}) == 100


def test_clashes_keep_the_earlier_file(tmp_path: Path) -> None:
    write(tmp_path, "a.conf", LISTEN)
    write(tmp_path, "b.conf", LISTEN.replace("11080", "11081") + "suffix = a\n")
    write(tmp_path, "c.conf", LISTEN)
    write(tmp_path, "d.conf", "listen = 0.0.0.0:11080\n")
    write(tmp_path, "e.conf", f"listen = 100.121.76.21:11082\nveth_subnet = {derived_subnet('a')}\n")
    write(tmp_path, "f.conf", "listen = 100.121.76.22:11080\n")
    write(tmp_path, "g.conf", "listen = 100.121.76.21:11083\ndns_domains = corp.example\n")
    write(tmp_path, "h.conf", "listen = 100.121.76.21:11084\nsuffix = x.corp.example\n")
    write(tmp_path, "i.conf", "listen = 100.121.76.21:11085\ndns_domains = net, example\n")
    write(tmp_path, "j.conf", "listen = 100.121.76.21:11086\ndns_listen = 100.121.76.21:11080\n")
    write(tmp_path, "k.conf", "listen = 100.121.76.21:11087\ndns_listen = 0.0.0.0:53\n")
    write(tmp_path, "l.conf", "listen = 100.121.76.21:53\n")
    # Forwards listen on their conf's listen address: a port there is one conf's.
    write(tmp_path, "f.conf", "listen = 100.121.76.22:11080\nforward = 15432=db:5432\n")
    write(tmp_path, "m.conf", "listen = 100.121.76.22:15432\n")
    write(tmp_path, "n.conf", "listen = 100.121.76.21:11088\nforward = 11080/udp=db:53\n")
    write(tmp_path, "o.conf", "listen = 0.0.0.0:11089\ndns_listen = no\nforward = 15432=pg:5432\n")
    write(tmp_path, "p.conf", "listen = 100.121.76.21:11090\nforward = 15432=pg:5432\n")
    good, errors = load_all(sorted(str(p) for p in tmp_path.glob("*.conf")))
    assert [c.name for c in good] == ["a", "f", "g", "p"]
    # Every DNS listen on 100.121.76.21:53 is one shared socket, no clash.
    assert {str(c.dns_listen) for c in good} == {"100.121.76.21:53", "100.121.76.22:53"}
    assert [str(e).replace(f"{tmp_path}/", "") for e in errors] == [
        'b.conf: suffix: "a" is already used by a.conf',
        'c.conf: listen: "100.121.76.21:11080" is already used by a.conf',
        'd.conf: listen: "0.0.0.0:11080" is already used by a.conf',
        f'e.conf: veth_subnet: "{derived_subnet("a")}" is already used by a.conf; '
        "set veth_subnet to a free /30",
        'h.conf: suffix: "x.corp.example" overlaps "corp.example" of g.conf',
        'i.conf: dns_domains: "example" overlaps "corp.example" of g.conf',
        'j.conf: dns_listen: "100.121.76.21:11080" is already used by a.conf',
        'k.conf: dns_listen: "0.0.0.0:53" is already used by a.conf',
        'l.conf: listen: "100.121.76.21:53" is already used by a.conf',
        'm.conf: listen: "100.121.76.22:15432" is already used by f.conf',
        'n.conf: forward: "11080/udp=db:53": 100.121.76.21:11080 is already used by a.conf',
        'o.conf: forward: "15432/tcp=pg:5432": 0.0.0.0:15432 is already used by f.conf',
    ]


def test_error_names_file_and_key(tmp_path: Path) -> None:
    error = ConfigError("/etc/tsproxy.d/fgpu.conf", "listen", "bad")
    assert (error.path, error.key, error.message) == ("/etc/tsproxy.d/fgpu.conf", "listen", "bad")
    assert str(ConfigError("/x.conf", None, "gone")) == "/x.conf: gone"
    assert os.path.basename(error.path) == "fgpu.conf"


@pytest.mark.parametrize("key, mode", [("users_file", 0o644), ("authkey_file", 0o640),
                                       ("authkey_file", 0o604)])
def test_secret_files_must_be_private(tmp_path: Path, key: str, mode: int) -> None:
    secret = write(tmp_path, "fgpu.secret", "tskey-auth-x\n")
    os.chmod(secret, mode)
    assert error_of(tmp_path, LISTEN + f"{key} = {secret}\n") == (
        f'fgpu.conf: {key}: "fgpu.secret" is readable by group or others (mode {mode:o}): '
        "chmod 600 it")


def test_every_problem_of_a_conf_is_named_in_file_order(tmp_path: Path) -> None:
    key = write(tmp_path, "fgpu.key", "tskey-auth-x\n")
    os.chmod(key, 0o644)
    path = write(tmp_path, "fgpu.conf", f"""port = 3
listen = 1.2.3.4
authkey_file = {key}
autostart = maybe
suffix = Bad_Suffix
socks = 1
""")
    with pytest.raises(ConfigError) as caught:
        load(path)
    lines = [str(problem).replace(f"{tmp_path}/", "") for problem in caught.value.problems]
    assert lines == [
        "fgpu.conf: port: unknown key (see tsproxy.d(5))",
        'fgpu.conf: listen: "1.2.3.4" is not IP:PORT (IPv6 as [ADDR]:PORT)',
        'fgpu.conf: authkey_file: "fgpu.key" is readable by group or others (mode 644): '
        "chmod 600 it",
        'fgpu.conf: autostart: "maybe" is not a boolean (yes or no)',
        'fgpu.conf: suffix: "Bad_Suffix" is not a DNS suffix (labels of a-z, 0-9 and -)',
        "fgpu.conf: socks: unknown key (see tsproxy.d(5))",
    ]
    good, errors = load_all([path])
    assert not good and [str(e) for e in errors] == [str(p) for p in caught.value.problems]


def test_every_bad_line_of_a_conf_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "fgpu.conf", LISTEN + "listen = 1.2.3.4:1\njust words\n[x\n")
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert [str(p).replace(f"{tmp_path}/", "") for p in caught.value.problems] == [
        "fgpu.conf: listen: given twice (line 2)",
        "fgpu.conf: line 3: Invalid line ('just words') (matched as neither section nor keyword)",
        "fgpu.conf: line 4: Invalid line ('[x') (matched as neither section nor keyword)",
    ]


def test_empty_list_values(tmp_path: Path) -> None:
    conf = load(write(tmp_path, "fgpu.conf", LISTEN + "allow_egress =\nallow_identities = ,\n"
                                                      "tailscaled_args =\n"))
    assert (conf.allow_egress, conf.allow_identities, conf.tailscaled_args) == ((), (), ())


def test_tsproxy_check_names_every_problem_one_line_each(tmp_path: Path) -> None:
    path = write(tmp_path, "fgpu.conf", "port = 3\nlisten = 1.2.3.4:5\nlisten = 1.2.3.4:6\n")
    bad = write(tmp_path, "work.conf", "listen = 1.2.3.4:7\nautostart = maybe\nsocks = 1\n")
    done = subprocess.run([sys.executable, "-m", "tsproxy", "check", str(path), str(bad)],
                          capture_output=True, text=True, timeout=30,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.replace(f"{tmp_path}/", "").splitlines() == [
        "fgpu.conf: listen: given twice (line 3)",
        "fgpu.conf: port: unknown key (see tsproxy.d(5))",
        'work.conf: autostart: "maybe" is not a boolean (yes or no)',
        "work.conf: socks: unknown key (see tsproxy.d(5))",
    ]


def test_forwards(tmp_path: Path) -> None:
    conf = load(write(tmp_path, "fgpu.conf", LISTEN + "forward = 15432=db.fgpu:5432, "
                      "13389=[fd7a:115c:a1e0::7]:3389, 5353/udp=100.64.0.2:53, 5353/tcp=dns:53\n"))
    assert conf.forwards == (Forward(15432, "tcp", "db.fgpu", 5432),
                             Forward(13389, "tcp", "fd7a:115c:a1e0::7", 3389),
                             Forward(5353, "udp", "100.64.0.2", 53),
                             Forward(5353, "tcp", "dns", 53))
    assert str(conf.forwards[1]) == "13389/tcp=[fd7a:115c:a1e0::7]:3389"
    # Without a DNS responder, its port is free for a forward.
    conf = load(write(tmp_path, "fgpu.conf", LISTEN + "dns_listen = no\nforward = 53/udp=dns:53\n"))
    assert conf.forwards == (Forward(53, "udp", "dns", 53),)
