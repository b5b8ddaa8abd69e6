"""Moving from the hand-made setup in a booted Debian 12 and 13: the seed's units (tests/seed.py)
run first, the real tailscaled in namespace tsFGPU and real socat on the host's tailnet
address; tsproxy@fgpu started beside them cannot bind, and status and doctor name socat and
the CoreDNS stand-in with pid and unit; `tsproxy migrate` names every old unit and the
commands, which are then run as printed; tsproxy@fgpu serves on the same address (curl, dig)
as the same node (the state's keys compared before and after)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import images
import pytest
from gateway import HOST_TS_IP, bring_up_network, install
from nspawn import Container, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import seed

pytestmark = pytest.mark.system

# Real socat, and dig to judge the DNS answers: an image of their own, beside the base.
SEED_PACKAGES = (*images.BASE_PACKAGES, "socat", "bind9-dnsutils")
OLD_UNITS = ["ts-netns.service", "tailscaled-tsFGPU.service", "socks-tsFGPU.service",
             "expose-socks-tsFGPU.service", "coredns-fgpu.service"]
TO_STOP = ["coredns-fgpu.service", "expose-socks-tsFGPU.service", "socks-tsFGPU.service",
           "tailscaled-tsFGPU.service", "ts-netns.service"]
OLD_STATE = f"{seed.STATE_DIR}/tailscaled.state"
NEW_STATE = "/var/lib/tsproxy/fgpu/tailscaled.state"


@pytest.fixture(scope="session")
def debian_image(debian_suite: str) -> Path:
    """Overrides conftest's for this module: the base packages plus socat and dig."""
    return images.ensure_base_image(SEED_PACKAGES, debian_suite, variant="socat")


def set_up_seed(c: Container) -> None:
    """The user's setup as their README deploys it, running."""
    c.write_file(seed.SETUP_SCRIPT, seed.SETUP, mode=0o755)
    c.write_file(seed.COREDNS, seed.stand_in(), mode=0o755)
    c.write_file(seed.MICROSOCKS, seed.stand_in(), mode=0o755)
    for name, text in seed.files().items():
        c.write_file(f"/etc/systemd/system/{name}", text)
    c.run(f"systemctl daemon-reload && systemctl enable --now {' '.join(OLD_UNITS)}")
    wait_for(lambda: c.run(f"test -S {seed.SOCKET}", check=False).returncode == 0,
             what="the old tailscaled")
    # The seed's "tailscale up" (no control server here: its login cannot finish, but the
    # daemon makes its machine key and saves its prefs, as on the way to any login).
    c.run(f"ip netns exec {seed.NETNS} tailscale --socket={seed.SOCKET} up "
          "--login-server=http://127.0.0.1:9 --accept-routes --timeout=3s", check=False)
    wait_for(lambda: "_machinekey" in state_keys(c, OLD_STATE), what="the old node's machine key")
    for unit in OLD_UNITS:
        assert c.run(f"systemctl is-active {unit}", check=False).stdout.strip() == "active", unit


def main_pid(c: Container, unit: str) -> str:
    return c.run(f"systemctl show -P MainPID {unit}").stdout.strip()


def state_keys(c: Container, path: str) -> dict[str, Any]:
    """tailscaled's state file: a JSON object of base64 values (most of them JSON again)."""
    return json.loads(c.run(f"cat {path}").stdout)


def fails(output: str) -> dict[str, tuple[str, str]]:
    """doctor's FAIL lines: check -> (problem, the fix line under it)."""
    lines = output.splitlines()
    return {line.split(": ", 2)[1]: (line.split(": ", 2)[2], lines[i + 1].strip())
            for i, line in enumerate(lines) if line.startswith("FAIL")}


def test_migrate_from_the_hand_made_setup(booted_debian: Container, tailscale_deb: Path) -> None:
    c = booted_debian
    bring_up_network(c)
    install(c, tailscale_deb, {"fgpu.conf": f"listen = {HOST_TS_IP}:11080\n"})
    set_up_seed(c)
    socat, coredns = main_pid(c, "expose-socks-tsFGPU"), main_pid(c, "coredns-fgpu")
    before = state_keys(c, OLD_STATE)
    old_node = c.run(f"tailscale --socket={seed.SOCKET} status --json", check=False).stdout

    # `tsproxy --version` is the installed package's.
    assert c.run("tsproxy --version").stdout == \
        f"tsproxy {c.run(['dpkg-query', '-W', '-f=${Version}', 'tsproxy']).stdout}\n"

    # tsproxy started beside it: its sockets cannot bind; status and doctor say who holds them.
    c.run("systemctl daemon-reload")
    c.run("systemctl start tsproxy@fgpu", check=False)
    wait_for(lambda: c.run("systemctl is-failed tsproxy-socks@fgpu.socket tsproxy-dns.socket",
                           check=False).stdout.split() == ["failed", "failed"],
             what="tsproxy's sockets failing to bind")
    held = (f"{HOST_TS_IP}:11080 (tcp) is held by socat (pid {socat}, unit "
            "expose-socks-tsFGPU.service)")
    dns_held = (f"{HOST_TS_IP}:53 (udp) is held by coredns (pid {coredns}, unit "
                "coredns-fgpu.service)")
    row = json.loads(c.run("tsproxy status --json fgpu", check=False).stdout)[0]
    assert row["problem"] == (f"{held}: systemctl disable --now expose-socks-tsFGPU.service, "
                              "then systemctl restart tsproxy-socks@fgpu.socket (see tsproxy migrate fgpu)")
    assert row["dns_listen_held"] == f"{dns_held}: systemctl disable --now coredns-fgpu.service"
    doctor = c.run("tsproxy doctor fgpu", check=False)
    assert doctor.returncode == 3
    found = fails(doctor.stdout)
    assert found["proxy socket bound"] == (held, "fix: systemctl disable --now "
                                           "expose-socks-tsFGPU.service, then systemctl restart "
                                           "tsproxy-socks@fgpu.socket (see tsproxy migrate fgpu)"
                                           "  (not run by --fix)")
    assert found["DNS answers an IP-embedded name"][0] == dns_held

    # migrate names every old unit and the commands.
    plan = c.run("tsproxy migrate fgpu")
    assert plan.stderr == ""
    for unit in OLD_UNITS:
        assert re.search(rf"^  {re.escape(unit)} +enabled, active +\S", plan.stdout, re.M), unit
    assert f"{held}\n" in plan.stdout and f"{dns_held}\n" in plan.stdout
    steps = re.findall(r"^  \d+\. (.*?)(?:  \(.*)?$", plan.stdout, re.M)
    assert steps == [
        "systemctl stop tsproxy@fgpu",
        f"systemctl disable --now {' '.join(TO_STOP)}",
        "ip netns del tsFGPU",
        f"tsproxy migrate fgpu --state-from {seed.STATE_DIR} --force",
        "systemctl start tsproxy@fgpu",
        "tsproxy status fgpu"], plan.stdout

    # Bad input: one line, exit 1, nothing changed.
    new_state = c.run(f"cat {NEW_STATE}").stdout  # the node tsproxy@fgpu made meanwhile
    for args, message in (
            ("--from-netns tsNOPE", "tsproxy: --from-netns: namespace tsNOPE does not exist "
             "(not in /run/netns, named by no unit in /etc/systemd/system, "
             "/usr/local/lib/systemd/system)"),
            ("--state-from /var/lib/nope", "tsproxy: --state-from: /var/lib/nope does not exist"),
            (f"--stop --force --state-from {seed.STATE_DIR}",
             "tsproxy: tsproxy-tailscaled@fgpu.service runs on /var/lib/tsproxy/fgpu: "
             "systemctl stop tsproxy@fgpu first")):
        refused = c.run(f"tsproxy migrate fgpu {args}", check=False)
        assert (refused.returncode, refused.stdout, refused.stderr) == (1, "", message + "\n")
    c.run("systemctl stop tsproxy@fgpu")
    refused = c.run(f"tsproxy migrate fgpu --state-from {seed.STATE_DIR}", check=False)
    assert (refused.returncode, refused.stderr) == (
        1, f"tsproxy: tailscaled (pid {main_pid(c, 'tailscaled-tsFGPU')}, unit "
           f"tailscaled-tsFGPU.service) still runs on {seed.STATE_DIR}: copying a live state "
           "would make two nodes with one key; systemctl disable --now "
           "tailscaled-tsFGPU.service (or add --stop)\n")
    assert c.run(f"cat {NEW_STATE}").stdout == new_state
    for unit in OLD_UNITS:
        assert c.run(f"systemctl is-active {unit}", check=False).stdout.strip() == "active", unit

    # The steps as printed (the first is done), then the state copy with --stop.
    c.run(steps[1])
    assert c.run("ss -Hltnu 'sport = :11080 or sport = :53'").stdout == ""
    moved = c.run(f"tsproxy migrate fgpu --stop --force --state-from {seed.STATE_DIR}")
    assert "running: ip netns del tsFGPU\n" in moved.stdout
    assert f"copied {seed.STATE_DIR} to /var/lib/tsproxy/fgpu (the state it had is now " \
        "/var/lib/tsproxy/fgpu.before-migrate-" in moved.stdout
    assert "tsFGPU" not in c.run("ip netns list").stdout
    assert c.run("stat -c %a /var/lib/tsproxy/fgpu " + NEW_STATE).stdout.split() == ["700", "600"]
    for unit in OLD_UNITS:
        assert c.run(f"systemctl is-enabled {unit}", check=False).stdout.strip() == "disabled"

    # tsproxy serves where socat and CoreDNS did, and is the old node.
    c.run("systemctl start tsproxy@fgpu")
    wait_for(lambda: c.run(f"ss -Hltn 'sport = :11080' | grep -qF {HOST_TS_IP}:11080",
                           check=False).returncode == 0, what="the proxy socket")
    answer = c.run(["dig", "+short", "+time=3", "+tries=2", f"@{HOST_TS_IP}", "10.1.2.3.fgpu"])
    assert answer.stdout.strip() == "10.1.2.3"
    wait_for(lambda: json.loads(c.run("tsproxy status --json fgpu", check=False).stdout)[0]
             ["backend_state"] is not None, what="tsproxy's tailscaled answering")
    row = json.loads(c.run("tsproxy status --json fgpu", check=False).stdout)[0]
    assert row["listen_held"] is None and row["dns_listen_held"] is None
    assert row["units"]["proxy_socket"] == "active" and row["units"]["dns_socket"] == "active"
    after = state_keys(c, NEW_STATE)
    # The machine key, and every key of the old state, kept by tsproxy's tailscaled.
    assert "_machinekey" in before and after["_machinekey"] == before["_machinekey"]
    assert {k: v for k, v in after.items() if k in before} == before, compare(before, after)
    new_node = c.run("tailscale --socket=/run/tsproxy/fgpu/tailscaled.sock status --json",
                     check=False).stdout
    print(f"identity: {compare(before, after)}; old node {brief(old_node)}, "
          f"new node {brief(new_node)}")


def compare(before: dict[str, Any], after: dict[str, Any]) -> str:
    same = sorted(k for k in before if after.get(k) == before[k])
    changed = sorted(k for k in before if k in after and after[k] != before[k])
    return f"same {same}, changed {changed}, new {sorted(set(after) - set(before))}"


def brief(status_json: str) -> str:
    try:
        node = json.loads(status_json)
    except ValueError:
        return "?"
    self = node.get("Self") or {}
    return f"{node.get('BackendState')} {self.get('PublicKey')} {self.get('TailscaleIPs')}"
