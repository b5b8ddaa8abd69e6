"""The seed's Usage section end to end, with real tailscaled on two offline tailnets.

A "mac" on the home tailnet reaches the fgpu tailnet through the gateway's home address
only: the gateway's own tailscaled is on home, tsproxy's instance fgpu (from
/etc/tsproxy.d/fgpu.conf, auth key and login server in the conf) is on fgpu, and both
tailnets hand out 100.64.0.N, so the same addresses mean different nodes on each side.
Third-party clients are the judges: curl, dig, ssh with nc, Chromium.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from lab import PORT, SSH_FORWARD, WEB_FORWARD, Lab
from world import WEB_PAGE, Node, wait_for

CHROMIUM = "/usr/bin/chromium"
# Quiet and contained: no sync, updates, metrics or first-run traffic, a profile of its own.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--metrics-recording-only", "--disable-default-apps",
                  "--disable-crash-reporter", "--no-default-browser-check"]

pytestmark = pytest.mark.lab


def mac_curl(lab: Lab, *args: str, node: str = "mac") -> tuple[int, str]:
    proc = lab.world.nodes[node].exec(["curl", "-sS", "-m", "15", *args], check=False, timeout=30)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("proxy", ["socks5h", "connect"])
@pytest.mark.parametrize("host", ["ip", "name"])
def test_web_through_the_gateway(lab: Lab, proxy: str, host: str) -> None:
    """(1) curl from the mac, by fgpu address and by peer name, SOCKS5 and HTTP CONNECT."""
    name = f"{lab.web_ip}.fgpu" if host == "ip" else "web.fgpu"
    via = (["-x", f"socks5h://{lab.gw_ip}:{PORT}"] if proxy == "socks5h"
           else ["-p", "-x", f"http://{lab.gw_ip}:{PORT}"])
    rc, out = mac_curl(lab, *via, f"http://{name}:3000/")
    assert (rc, out) == (0, WEB_PAGE)


@pytest.mark.parametrize("name", ["ip", "web", "ssh"])
def test_dig_through_the_gateway(lab: Lab, name: str) -> None:
    """(2) the gateway's DNS answers fgpu names with fgpu addresses (not home's)."""
    qname, want = {"ip": (f"{lab.web_ip}.fgpu", lab.web_ip), "web": ("web.fgpu", lab.web_ip),
                   "ssh": ("ssh.fgpu", lab.ssh_ip)}[name]
    out = lab.world.nodes["mac"].exec(["dig", "+short", "+time=3", "+tries=2", f"@{lab.gw_ip}", qname, "A"]).stdout
    assert out.split() == [want]


def test_isolation(lab: Lab) -> None:
    """(5) fgpu is reached through the proxy only: not directly from the mac (there the same
    100.64.0.N are home's nodes), not from the gateway's host namespace; and the gateway's
    /etc/resolv.conf is as it was before the lab installed anything."""
    for ip in (lab.web_ip, lab.ssh_ip):
        rc, out = mac_curl(lab, "-m", "3", f"http://{ip}:3000/")
        assert rc != 0 and WEB_PAGE not in out, out
        rc, out = mac_curl(lab, "-m", "3", f"http://{lab.gw_ip}:3000/")
        assert rc != 0 and WEB_PAGE not in out, out
        host = lab.gw.run(["curl", "-sS", "-m", "3", f"http://{ip}:3000/"], check=False)
        assert host.returncode != 0 and WEB_PAGE not in host.stdout, host.stdout + host.stderr
        # The host's route to that address is its own tailnet's (home), never the instance's veth.
        route = lab.gw.run(["ip", "-o", "route", "get", ip]).stdout
        assert " dev tailscale0 " in route, route
    # Inside ts-fgpu the same address is fgpu's web: the overlap is real.
    inside = lab.gw.run(["ip", "netns", "exec", "ts-fgpu", "curl", "-sS", "-m", "10",
                         f"http://{lab.web_ip}:3000/"])
    assert inside.stdout == WEB_PAGE
    assert lab.gw.run(["cat", "/etc/resolv.conf"], text=False).stdout == lab.resolv_before


def test_fgpu_refuses_a_wrong_auth_key(lab: Lab) -> None:
    """The fgpu control is a real gate: a new node with a wrong key stays out (so the
    gateway's instance got in by its authkey_file)."""
    stranger = Node("stranger", lab.world.world_ns, lab.world.dir / "stranger", lab.world)
    lab.world.nodes["stranger"] = stranger
    stranger.start_tailscaled()
    done = stranger.tailscale("up", f"--login-server={lab.world.state['fgpu_url']}", "--auth-key=tskey-wrong",
                              "--timeout=15s", check=False, timeout=30)
    assert done.returncode != 0 and "invalid authkey" in done.stderr, done.stderr
    assert stranger.status()["BackendState"] == "NeedsLogin"
    stranger.stop()


def test_tsproxy_client_ssh_block_runs_a_command(lab: Lab, tmp_path: Path) -> None:
    """(3) ssh from the mac with the ProxyCommand that `tsproxy client --for ssh` prints."""
    block = lab.gw.run(["tsproxy", "client", "--for", "ssh", "fgpu"]).stdout
    assert f"nc -X 5 -x {lab.gw_ip}:{PORT} %h %p" in block, block
    key = lab.world.nodes["ssh"].dir / "client_key"
    config = tmp_path / "ssh_config"
    config.write_text(block + f"\nHost *\n  IdentityFile {key}\n  IdentitiesOnly yes\n"
                      "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  BatchMode yes\n")
    for host in (f"{lab.ssh_ip}.fgpu", "ssh.fgpu"):
        done = lab.world.nodes["mac"].exec(
            ["ssh", "-F", str(config), f"root@{host}", "ip -4 -o addr show dev tailscale0"],
            check=False, timeout=60)
        # The command ran on the ssh peer: its tailscale0 carries its fgpu address.
        assert done.returncode == 0, done.stderr
        assert f" {lab.ssh_ip}/32 " in done.stdout, done.stdout


def test_forwards_reach_fgpu_peers(lab: Lab, tmp_path: Path) -> None:
    """Forwards: plain curl and plain ssh (no proxy, no ProxyCommand) from the mac to the
    gateway's home address reach fgpu's peers by name; mac2's user is not allowed there
    either."""
    rc, out = mac_curl(lab, f"http://{lab.gw_ip}:{WEB_FORWARD}/")
    assert (rc, out) == (0, WEB_PAGE)
    rc, out = mac_curl(lab, f"http://{lab.gw_ip}:{WEB_FORWARD}/", node="mac2")
    assert rc != 0 and WEB_PAGE not in out, out
    key = lab.world.nodes["ssh"].dir / "client_key"
    done = lab.world.nodes["mac"].exec(
        ["ssh", "-p", str(SSH_FORWARD), "-i", str(key), "-o", "IdentitiesOnly=yes", "-o",
         "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
         f"root@{lab.gw_ip}", "ip -4 -o addr show dev tailscale0"], check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f" {lab.ssh_ip}/32 " in done.stdout, done.stdout
    listing = lab.gw.run(["tsproxy", "client", "--for", "forwards"]).stdout
    assert f"{lab.gw_ip}:{SSH_FORWARD}/tcp -> ssh.fgpu:22    e.g. ssh -p {SSH_FORWARD} " \
           f"USER@{lab.gw_ip}" in listing, listing


def test_metrics_relay_the_real_tailscaleds(lab: Lab) -> None:
    """/metrics on the proxy port, from the mac: promtool accepts it, and tailscaled's own
    client metrics (LocalAPI usermetrics of the real daemon) come with the instance label."""
    rc, out = mac_curl(lab, f"http://{lab.gw_ip}:{PORT}/metrics")
    assert rc == 0, out
    check = subprocess.run(["promtool", "check", "metrics"], input=out, capture_output=True,
                           text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    assert 'tsproxy_tailscaled_backend_state{tsproxy_instance="fgpu",state="Running"} 1' in out
    relayed = [line for line in out.splitlines() if line.startswith("tailscaled_")]
    assert relayed and all('{tsproxy_instance="fgpu"' in line for line in relayed), out


def test_identity_not_allowed_is_refused(lab: Lab) -> None:
    """(6) mac2 is on home too, but its user is not in allow_identities: refused (WhoIs on the
    gateway's own tailscaled names it), while the mac's user gets through."""
    rc, out = mac_curl(lab, "-x", f"socks5h://{lab.gw_ip}:{PORT}", "http://web.fgpu:3000/", node="mac2")
    assert rc != 0 and WEB_PAGE not in out, out
    rc, out = mac_curl(lab, "-p", "-x", f"http://{lab.gw_ip}:{PORT}", "http://web.fgpu:3000/", node="mac2")
    assert rc != 0 and "403" in out, out
    mac2 = lab.world.nodes["mac2"]
    journal = lab.gw.run("journalctl -u 'tsproxy-socks@fgpu*' --no-pager -o cat").stdout
    refused = [line for line in journal.splitlines() if f"client={mac2.ip4()}:" in line]
    assert refused and all("to=web.fgpu" not in line or "refused" in line.lower() for line in refused), journal
    assert mac2.login_name() != lab.world.nodes["mac"].login_name()
    rc, out = mac_curl(lab, "-x", f"socks5h://{lab.gw_ip}:{PORT}", "http://web.fgpu:3000/")
    assert (rc, out) == (0, WEB_PAGE)


def test_chromium_follows_the_pac(lab: Lab, tmp_path: Path) -> None:
    """(4) headless Chromium on the mac, with only the gateway's PAC URL, loads web.fgpu."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run tools/install-deps")
    shot = tmp_path / "web.fgpu.png"
    common = ["env", f"HOME={tmp_path}", CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
              f"--proxy-pac-url=http://{lab.gw_ip}:{PORT}/proxy.pac"]
    mac = lab.world.nodes["mac"]
    dom = mac.exec([*common, "--dump-dom", "http://web.fgpu:3000/"], check=False, timeout=120)
    assert dom.returncode == 0, dom.stderr[-3000:]
    assert WEB_PAGE.strip() in dom.stdout, dom.stdout
    done = mac.exec([*common, f"--screenshot={shot}", "--window-size=800,200", "http://web.fgpu:3000/"],
                    check=False, timeout=120)
    assert done.returncode == 0 and shot.stat().st_size > 0, done.stderr[-3000:]


def test_tailscaled_killed_comes_back(lab: Lab) -> None:
    """(7a) tailscaled of the instance killed: systemd restarts it, requests work within 10 s."""
    unit = "tsproxy-tailscaled@fgpu.service"
    before = lab.gw.run(["systemctl", "show", "-P", "MainPID", unit]).stdout.strip()
    lab.gw.run(["systemctl", "kill", "-s", "KILL", unit])
    killed = time.monotonic()
    # Short probes (1 s: no SYN retransmit inside one) measure when the path is back, to
    # about 0.2 s. Most of the time is Tailscale's: the restarted daemon is Running within
    # about 3 s, and WireGuard's first handshake with a peer that has not yet learnt the new
    # disco key is lost and retried after 5 s (REKEY_TIMEOUT).
    wait_for(lambda: mac_curl(lab, "-m", "1", "-x", f"socks5h://{lab.gw_ip}:{PORT}",
                              "http://web.fgpu:3000/") == (0, WEB_PAGE), 60, interval=0.2,
             what="a request through the restarted tailscaled")
    elapsed = time.monotonic() - killed
    print(f"requests work again {elapsed:.1f}s after the kill")
    assert elapsed < 10
    after = lab.gw.run(["systemctl", "show", "-P", "MainPID", unit]).stdout.strip()
    assert after not in ("0", before)


def test_reboot_comes_back(lab: Lab) -> None:
    """(7b) the gateway rebooted: (1) and (2) pass again with no step on the gateway (the
    world plugs its uplink back in, as the cable of a host is in when it boots)."""
    lab.reboot()
    booted = time.monotonic()
    wait_for(lambda: mac_curl(lab, "-m", "3", "-x", f"socks5h://{lab.gw_ip}:{PORT}",
                              "http://web.fgpu:3000/") == (0, WEB_PAGE), 90, interval=0.5,
             what="a request through the gateway after its reboot")
    print(f"requests work {time.monotonic() - booted:.1f}s after the gateway booted")
    test_web_through_the_gateway(lab, "connect", "ip")
    test_dig_through_the_gateway(lab, "web")
    assert lab.gw.run(["cat", "/etc/resolv.conf"], text=False).stdout == lab.resolv_before
