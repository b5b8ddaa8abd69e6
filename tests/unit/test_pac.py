"""The PAC file, judged by pacparser (a real PAC engine: SpiderMonkey plus the PAC helpers),
which tools/install-deps installs in a venv of its own."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from pathlib import Path

import pytest

from tsproxy import pac
from tsproxy_generator.config import load_all
from tsproxy_generator.model import Listen, TailnetConf

pytestmark = pytest.mark.unit

PACPARSER = (Path(os.environ.get("TSPROXY_TEST_CACHE", "/var/cache/tsproxy-test"))
             / "pac-venv/bin/python")
# Reads {"pac": TEXT, "urls": [[URL, HOST], ...]} and prints what FindProxyForURL returns.
EVALUATE = """
import json, sys, pacparser
job = json.load(sys.stdin)
pacparser.init()
pacparser.parse_pac_string(job["pac"])
print(json.dumps([pacparser.find_proxy(url, host) for url, host in job["urls"]]))
pacparser.cleanup()
"""

CONFS = {
    "fgpu": "listen = 100.121.76.21:11080\ndns_domains = corp.example, gpu.example.com\n",
    "lab": "listen = [fd7a:115c:a1e0::5]:1080\nsuffix = lab.internal\n",
    "wild": "listen = 0.0.0.0:1081\ndns_listen = no\n",
    "wild6": "listen = [::]:1082\nsuffix = w6\ndns_listen = no\n",
}
FGPU = "SOCKS5 100.121.76.21:11080; SOCKS 100.121.76.21:11080; PROXY 100.121.76.21:11080"
LAB = ("SOCKS5 [fd7a:115c:a1e0::5]:1080; SOCKS [fd7a:115c:a1e0::5]:1080; "
       "PROXY [fd7a:115c:a1e0::5]:1080")


def load(tmp_path: Path) -> list[TailnetConf]:
    for name, text in CONFS.items():
        (tmp_path / f"{name}.conf").write_text(text)
    good, errors = load_all(sorted(str(p) for p in tmp_path.glob("*.conf")))
    assert errors == []
    return good


def evaluate(text: str, urls: list[str]) -> dict[str, str]:
    if not PACPARSER.exists():
        pytest.fail(f"{PACPARSER} is missing: run tools/install-deps")
    # The host as the URL spells it: engines differ in whether they lowercase it first.
    jobs = [[url, url.split("/")[2].rsplit(":", 1)[0] if url.count(":") > 1 else
             url.split("/")[2]] for url in urls]
    done = subprocess.run([str(PACPARSER), "-c", EVALUATE], input=json.dumps(
        {"pac": text, "urls": jobs}), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return dict(zip(urls, json.loads(done.stdout), strict=True))


def proxied(proxy: str) -> str:
    return f"SOCKS5 {proxy}; SOCKS {proxy}; PROXY {proxy}"


# URL -> what the PAC served by the "wild" instance to a client of 100.80.0.1:1081 says.
TABLE = {
    "http://web.fgpu/": FGPU,
    "http://WEB.FGPU:3000/": FGPU,
    "http://web.fgpu.:3000/x": FGPU,
    "http://Web.Fgpu./": FGPU,
    "http://10.100.10.141.fgpu:3000/": FGPU,
    "https://fgpu/": FGPU,
    "http://git.corp.example/": FGPU,
    "http://CORP.EXAMPLE./": FGPU,
    "http://a.b.gpu.example.com/": FGPU,
    "http://gpu.lab.internal/": LAB,
    "http://lab.internal:8080/": LAB,
    "http://box.wild/": proxied("100.80.0.1:1081"),  # the arrival address itself
    "http://box.w6/": proxied("100.80.0.1:1082"),  # unspecified: arrival IP, its own port
    # Look-alikes: a suffix only counts at a label boundary, and only at the end.
    "http://xfgpu/": "DIRECT",
    "http://web.xfgpu/": "DIRECT",
    "http://fgpu.evil.com/": "DIRECT",
    "http://web.fgpu.evil.com/": "DIRECT",
    "http://fgpu-web/": "DIRECT",
    "http://notcorp.example/": "DIRECT",
    "http://example.com/": "DIRECT",
    "http://gpu.example.org/": "DIRECT",
    "http://lab/": "DIRECT",
    "http://internal/": "DIRECT",
    "http://wild.example/": "DIRECT",
    "http://100.64.0.7/": "DIRECT",
    "http://[fd7a:115c:a1e0::9]/": "DIRECT",
    "https://www.debian.org/": "DIRECT",
    "http://localhost:8080/": "DIRECT",
}


def test_served_pac_in_a_pac_engine(tmp_path: Path) -> None:
    confs = load(tmp_path)
    wild = next(c for c in confs if c.name == "wild")
    text = pac.served(confs, wild, Listen(ipaddress.ip_address("100.80.0.1"), 1081))
    assert evaluate(text, list(TABLE)) == TABLE


def test_a_proxy_whose_conf_went_bad_still_serves_its_own_names(tmp_path: Path) -> None:
    confs = load(tmp_path)
    fgpu = next(c for c in confs if c.name == "fgpu")
    others = [c for c in confs if c.name != "fgpu"]
    arrival = Listen(ipaddress.ip_address("100.121.76.21"), 11080)
    text = pac.served(others, fgpu, arrival)
    assert evaluate(text, ["http://web.fgpu/", "http://box.lab.internal/"]) == {
        "http://web.fgpu/": FGPU, "http://box.lab.internal/": LAB}


def test_an_ipv6_arrival_leaves_out_ipv4_only_wildcards(tmp_path: Path) -> None:
    confs = load(tmp_path)
    lab = next(c for c in confs if c.name == "lab")
    text = pac.served(confs, lab, lab.listen)
    assert evaluate(text, ["http://box.wild/", "http://box.w6/", "http://web.fgpu/"]) == {
        "http://box.wild/": "DIRECT",  # 0.0.0.0 cannot be reached at an IPv6 address
        "http://box.w6/": proxied("[fd7a:115c:a1e0::5]:1082"),
        "http://web.fgpu/": FGPU}


def test_no_confs_is_all_direct() -> None:
    text = pac.render([])
    assert evaluate(text, ["http://web.fgpu/", "http://x/"]) == {
        "http://web.fgpu/": "DIRECT", "http://x/": "DIRECT"}


@pytest.mark.parametrize(("listen", "gateway", "expected"), [
    ("100.121.76.21:11080", None, "100.121.76.21:11080"),
    ("100.121.76.21:11080", "100.64.0.1", "100.121.76.21:11080"),  # a real address stays
    ("0.0.0.0:1080", "100.64.0.1", "100.64.0.1:1080"),
    ("0.0.0.0:1080", None, None),
    ("0.0.0.0:1080", "fd7a:115c:a1e0::1", None),
    ("[::]:1080", "100.64.0.1", "100.64.0.1:1080"),
    ("[::]:1080", "fd7a:115c:a1e0::1", "[fd7a:115c:a1e0::1]:1080"),
])
def test_reach(listen: str, gateway: str | None, expected: str | None) -> None:
    host, _, port = listen.rpartition(":")
    address = Listen(ipaddress.ip_address(host.strip("[]")), int(port))
    reached = pac.reach(address, ipaddress.ip_address(gateway) if gateway else None)
    assert (str(reached) if reached else None) == expected
