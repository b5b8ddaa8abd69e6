"""Operating an instance in a booted Debian 12 and 13: `tsproxy status`, `list` and `logout`
on the real units, after start, after tailscaled crashes or is stopped, after `ip netns del`
and `nft delete table`, each followed by the instance healing (by itself, or by the one
command status names); `doctor`; the troubleshooting helpers `tailscale` and `exec`."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import pytest
from gateway import HOST_TS_IP, bring_up_network, dig, install
from nspawn import Container, wait_for

pytestmark = pytest.mark.system

HEAL_WITHIN = 10.0
CONFS = {"fgpu.conf": f"listen = {HOST_TS_IP}:11080\n",
         "lab.conf": f"listen = {HOST_TS_IP}:11082\nautostart = no\n"}
ALL_UP = {"instance": "active", "tailscaled": "active", "proxy_socket": "active",
          "watch": "active", "dns_socket": "active"}


def status(c: Container, *names: str, user: str | None = None) -> tuple[int, list[dict[str, Any]]]:
    command = ["tsproxy", "status", "--json", *names]
    if user:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    done = c.run(command, check=False)
    assert done.stderr == "", done.stderr
    return done.returncode, json.loads(done.stdout)


def fgpu(c: Container) -> dict[str, Any]:
    return status(c, "fgpu")[1][0]


def as_after_start(c: Container) -> bool:
    """fgpu as it is after a start with no login: every unit up, tailscaled answering
    NeedsLogin, so unhealthy for one reason only."""
    row = fgpu(c)
    return ({k: row["units"][k] for k in ALL_UP} == ALL_UP
            and row["backend_state"] == "NeedsLogin"
            and row["problem"] == "logged out: tsproxy login fgpu")


def test_status_list_logout(booted_debian: Container, tailscale_deb: Path) -> None:
    c = booted_debian
    bring_up_network(c)
    install(c, tailscale_deb, CONFS)
    c.run("systemctl daemon-reload && systemctl start tsproxy@fgpu")

    # The package's bash completion is where bash-completion looks, and defines the command's.
    assert c.run("bash -c '. /usr/share/bash-completion/completions/tsproxy && "
                 "complete -p tsproxy'").stdout.strip() == "complete -F _tsproxy tsproxy"

    # list: both confs generated, fgpu starts at boot and runs, lab neither.
    rows = {r["name"]: r for r in json.loads(c.run("tsproxy list --json").stdout)}
    assert {n: (r["generated"], r["autostart"], r["state"]) for n, r in rows.items()} == {
        "fgpu": ("yes", True, "active"), "lab": ("yes", False, "inactive")}
    assert c.run("tsproxy list").stdout.splitlines()[0].split() == [
        "NAME", "GENERATED", "AUTOSTART", "STATE", "CONF"]

    # After start: unhealthy only for want of a login; exit status 3; the same for any user.
    wait_for(lambda: as_after_start(c), what=f"status after start (now: {fgpu(c)})")
    code, rows_ = status(c)
    assert code == 3 and [r["name"] for r in rows_] == ["fgpu", "lab"]
    assert rows_[1]["problem"] == "tsproxy@lab.service is inactive: systemctl start tsproxy@lab"
    assert status(c, "fgpu", user="65534")[1][0]["backend_state"] == "NeedsLogin"
    table = c.run("tsproxy status fgpu", check=False)
    assert table.returncode == 3 and "\033[" not in table.stdout  # no terminal, no colour
    assert table.stdout.splitlines()[1].split()[:9] == [
        "fgpu", "UNHEALTHY", "up", "up", "up", "-", "up", "up", "NeedsLogin"]
    # The status page, served by the real proxy unit from inside the namespace (unit states
    # over D-Bus, tailscaled's LocalAPI), shows the health `tsproxy status` shows.
    page = c.run(f"curl -sS -m 10 http://{HOST_TS_IP}:11080/").stdout
    shown = re.search(r'<p id="health" class="bad">Unhealthy: <span id="problem">([^<]*)<', page)
    assert shown and html.unescape(shown[1]) == fgpu(c)["problem"], page
    # The proxy's counters show once it has served a connection.
    c.run(f"curl -sS -m 5 -x socks5h://{HOST_TS_IP}:11080 http://127.0.0.1.fgpu/", check=False)
    wait_for(lambda: (fgpu(c)["connections_total"] or 0) >= 1, what="the proxy's counters")
    # /metrics, from inside the namespace, counts what the DNS responder (in the host's
    # namespace, its counters in its own RuntimeDirectory) answered for fgpu's names.
    assert dig(c, "+short", "10.1.2.3.fgpu").split() == ["10.1.2.3"]
    counted = re.compile(r'^tsproxy_dns_queries_total\{tsproxy_instance="fgpu",rcode="NOERROR",'
                         r'type="A"\} [1-9]', re.M)
    wait_for(lambda: counted.search(c.run(f"curl -sS -m 5 http://{HOST_TS_IP}:11080/metrics")
                                    .stdout), what="the DNS responder's count in /metrics")

    # tailscaled crashes: status says so, and systemd restarts it.
    c.run("systemctl kill -s KILL tsproxy-tailscaled@fgpu")
    row = fgpu(c)
    assert row["problem"] != "logged out: tsproxy login fgpu", row
    wait_for(lambda: as_after_start(c), timeout=HEAL_WITHIN,
             what=f"tailscaled back after a crash (now: {fgpu(c)})")

    # tailscaled stopped by hand: no restart on its own; status names the repair.
    c.run("systemctl stop tsproxy-tailscaled@fgpu")
    row = fgpu(c)
    assert row["units"]["tailscaled"] == "inactive"
    assert row["problem"] == ("tsproxy-tailscaled@fgpu.service is inactive: "
                              "systemctl restart tsproxy@fgpu"), row
    c.run("systemctl restart tsproxy@fgpu")
    wait_for(lambda: as_after_start(c), timeout=HEAL_WITHIN,
             what=f"healed by the named command (now: {fgpu(c)})")

    # The namespace or the nft table deleted by hand: back by itself.
    for break_it, gone in (("ip netns del ts-fgpu", "network namespace ts-fgpu is gone"),
                           ("nft delete table inet tsproxy-fgpu",
                            "nft table inet tsproxy-fgpu is gone")):
        invocation = c.run("systemctl show -P InvocationID tsproxy@fgpu").stdout
        c.run(break_it)
        row = fgpu(c)
        # Unless the watchdog was quicker than this status (it looks every 2 s), status
        # names what is gone and the repair.
        if c.run("systemctl show -P InvocationID tsproxy@fgpu").stdout == invocation:
            assert row["problem"] == (f"{gone}: systemctl restart "
                                      "tsproxy@fgpu (tsproxy-watch@fgpu does it within seconds)")
        wait_for(lambda invocation=invocation: c.run(
            "systemctl show -P InvocationID tsproxy@fgpu").stdout != invocation and
            as_after_start(c), timeout=HEAL_WITHIN,
            what=f"status after {break_it} (now: {fgpu(c)})")
        row = fgpu(c)
        assert (row["netns"], row["veth"], row["nft_table"]) == (True, True, True)

    # logout: root only, one line either way, never a traceback.
    refused = c.run("setpriv --reuid=65534 --regid=65534 --clear-groups tsproxy logout fgpu",
                    check=False)
    assert (refused.returncode, refused.stderr) == (
        1, "tsproxy: tsproxy logout must run as root: only root may change tailscaled's login\n")
    refused = c.run("setpriv --reuid=65534 --regid=65534 --clear-groups tsproxy login fgpu",
                    check=False)
    assert (refused.returncode, refused.stderr) == (
        1, "tsproxy: tsproxy login must run as root: only root may change tailscaled's login\n")
    done = c.run("tsproxy logout fgpu", check=False)
    assert "Traceback" not in done.stderr
    if done.returncode == 0:
        assert done.stdout == "fgpu: logged out; log in again with: tsproxy login fgpu\n"
    else:
        assert done.stderr.startswith("tsproxy: fgpu: tailscale logout failed: ")
        assert len(done.stderr.splitlines()) == 1, done.stderr
    missing = c.run("tsproxy logout nope", check=False)
    assert (missing.returncode, missing.stderr) == (
        1, "tsproxy: no instance 'nope': /etc/tsproxy.d/nope.conf does not exist\n")
    c.run("systemctl stop tsproxy@lab")
    stopped = c.run("tsproxy logout lab", check=False)
    assert (stopped.returncode, stopped.stderr) == (
        1, "tsproxy: lab: tailscaled is not running (/run/tsproxy/lab/tailscaled.sock is "
           "missing); start it with: systemctl start tsproxy@lab\n")


def fails(output: str) -> dict[str, str]:
    """doctor's FAIL lines: check -> the fix line under it."""
    lines = output.splitlines()
    return {line.split(": ", 2)[1]: lines[i + 1].strip()
            for i, line in enumerate(lines) if line.startswith("FAIL")}


def test_doctor(booted_debian: Container, tailscale_deb: Path) -> None:
    c = booted_debian
    bring_up_network(c)
    install(c, tailscale_deb, CONFS)
    c.run("systemctl daemon-reload && systemctl start tsproxy@fgpu")
    wait_for(lambda: as_after_start(c), what=f"fgpu up (now: {fgpu(c)})")
    troubleshooting_helpers(c)
    login = {"tailscaled logged in": "fix: tsproxy login fgpu  (not run by --fix)"}

    # Up but not logged in: that is all doctor finds, and --fix leaves it to the user.
    done = c.run("tsproxy doctor", check=False)
    assert done.returncode == 3 and fails(done.stdout) == login, done.stdout
    for check in ("conf valid", "generator output present and current", "netns present",
                  "veth, addresses and route", "nft table whole",
                  "forwarding guard whole",  # the container did not forward before
                  "tailscaled running",
                  "proxy socket bound", "DNS answers an IP-embedded name",
                  "watchdog running"):
        assert f"ok    fgpu: {check}\n" in done.stdout, (check, done.stdout)
    assert "ok    lab: instance started" in done.stdout  # autostart = no: stopped on purpose
    assert "ok    host: resolv.conf untouched" in done.stdout

    # Break what the watchdog does not watch; doctor names each and its fix.
    state_before = set(c.run("ls -A /var/lib/tsproxy/fgpu").stdout.split())
    assert "tailscaled.state" in state_before
    c.run("ip -n ts-fgpu route del default")
    c.run("systemctl stop tsproxy-dns.socket tsproxy-dns.service tsproxy-socks@fgpu.socket")
    c.run("sleep 0.01; touch /etc/tsproxy.d/fgpu.conf")  # changed since the last daemon-reload
    done = c.run("tsproxy doctor fgpu", check=False)
    assert done.returncode == 3
    assert fails(done.stdout) == {
        "generator output present and current": "fix: systemctl daemon-reload",
        "veth, addresses and route": "fix: systemctl restart tsproxy@fgpu",
        "proxy socket bound": "fix: systemctl restart tsproxy-socks@fgpu.socket",
        "DNS answers an IP-embedded name":
            "fix: systemctl restart tsproxy-dns.socket tsproxy-dns.service",
        **login}, done.stdout
    assert "FAIL  fgpu: veth, addresses and route: ts-fgpu has no default route via" in done.stdout

    # --fix runs the safe ones and checks again: only the login is left, no state deleted.
    done = c.run("tsproxy doctor --fix fgpu", check=False)
    assert done.returncode == 3, done.stdout
    before, after = done.stdout.split("after the fixes:\n")
    assert "fixing: systemctl daemon-reload" in before
    assert "fixing: systemctl restart tsproxy@fgpu" in before
    assert fails(after) == login, after
    assert state_before <= set(c.run("ls -A /var/lib/tsproxy/fgpu").stdout.split())
    assert c.run("ip -n ts-fgpu route show default").stdout.startswith("default via")

    # Refusals: one line each, never a traceback.
    refused = c.run("setpriv --reuid=65534 --regid=65534 --clear-groups tsproxy doctor",
                    check=False)
    assert (refused.returncode, refused.stderr) == (
        1, "tsproxy: tsproxy doctor must run as root: it reads nftables and every namespace\n")
    missing = c.run("tsproxy doctor nope", check=False)
    assert (missing.returncode, missing.stderr) == (
        1, "tsproxy: no instance 'nope': /etc/tsproxy.d/nope.conf does not exist\n")


def troubleshooting_helpers(c: Container) -> None:
    """`tsproxy tailscale` and `tsproxy exec` on the real tailscaled and namespace, fgpu
    running and logged out, lab stopped (run inside test_doctor, which has them so already:
    a boot of their own would cost a minute per Debian)."""
    nobody = "setpriv --reuid=65534 --regid=65534 --clear-groups "
    # The real CLI on fgpu's socket: as root from inside the namespace, as another user
    # from the host's (tailscaled answers it read-only).
    for user in ("", nobody):
        done = c.run(f"{user}tsproxy tailscale fgpu status --json", check=False)
        assert done.returncode == 0 and "Traceback" not in done.stderr, (user, done.stderr)
        assert json.loads(done.stdout)["BackendState"] == "NeedsLogin", (user, done.stdout)

    # exec sees the namespace's interfaces, not the host's.
    def names(output: str) -> set[str]:
        return {link["ifname"] for link in json.loads(output)}
    inside = names(c.run("tsproxy exec fgpu -- ip -j addr").stdout)
    assert inside == names(c.run("ip -n ts-fgpu -j addr").stdout)
    assert "eth0" in inside and "ts-fgpu" not in inside
    assert "ts-fgpu" in names(c.run("ip -j addr").stdout)
    assert c.run("tsproxy exec fgpu -- sh -c 'exit 7'", check=False).returncode == 7

    # Refusals: one line each, never a traceback.
    refused = c.run(f"{nobody}tsproxy exec fgpu -- ip addr", check=False)
    assert (refused.returncode, refused.stderr) == (
        1, "tsproxy: tsproxy exec must run as root: only root may enter an instance's "
           "namespace\n")
    stopped = c.run("tsproxy exec lab -- ip addr", check=False)
    assert (stopped.returncode, stopped.stderr) == (
        1, "tsproxy: lab: the instance is not running (/run/netns/ts-lab is missing); "
           "start it with: systemctl start tsproxy@lab\n")
    stopped = c.run("tsproxy tailscale lab status", check=False)
    assert (stopped.returncode, stopped.stderr) == (
        1, "tsproxy: lab: tailscaled is not running (/run/tsproxy/lab/tailscaled.sock is "
           "missing); start it with: systemctl start tsproxy@lab\n")
    for command in ("tailscale nope status", "exec nope -- ip addr"):
        missing = c.run(f"tsproxy {command}", check=False)
        assert (missing.returncode, missing.stderr) == (
            1, "tsproxy: no instance 'nope': /etc/tsproxy.d/nope.conf does not exist\n")
    usage = c.run("tsproxy exec fgpu ip addr", check=False)
    assert usage.returncode == 2 and usage.stderr.startswith("usage: tsproxy exec")


def journal(c: Container, unit: str) -> str:
    return str(c.run(f"journalctl -b -u {unit} --no-pager -o cat").stdout)


def test_reload_needs_only_what_the_package_depends_on(booted_debian: Container,
                                                         tailscale_deb: Path) -> None:
    # systemctl reload runs the units' ExecReload=; /bin/kill comes from procps, which the
    # package does not depend on: without it, reload must still work.
    c = booted_debian
    bring_up_network(c)
    c.write_file("/etc/tsproxy.d/fgpu.users", "alice:secret\n", mode=0o600)
    install(c, tailscale_deb, {
        "fgpu.conf": f"listen = {HOST_TS_IP}:11080\nusers_file = /etc/tsproxy.d/fgpu.users\n"})
    c.run("dpkg --purge --force-depends procps")
    assert c.run("ls /bin/kill /usr/bin/kill", check=False).returncode != 0
    c.run("systemctl daemon-reload && systemctl start tsproxy@fgpu tsproxy-dns.service")
    # The proxy starts on its first connection.
    c.run(f"curl -sS -m 5 -x socks5h://alice:secret@{HOST_TS_IP}:11080 "
          "http://127.0.0.1.fgpu/", check=False)
    wait_for(lambda: c.run("systemctl is-active tsproxy-socks@fgpu.service",
                           check=False).stdout.strip() == "active", what="the proxy")

    c.write_file("/etc/tsproxy.d/fgpu.users", "alice:secret\nbob:pw\n", mode=0o600)
    c.run("systemctl reload tsproxy-socks@fgpu")
    line = "fgpu: conf reloaded: nothing changed; users file reloaded: 2 logins"
    wait_for(lambda: line in journal(c, "tsproxy-socks@fgpu"), what="the proxy's reload line")
    # The instance's own reload (tsproxy reload) says the same, and needs no procps either.
    reload = c.run("systemctl reload tsproxy@fgpu", check=False)
    assert reload.returncode == 0, reload.stderr + journal(c, "tsproxy@fgpu")
    assert line in journal(c, "tsproxy@fgpu")

    served = journal(c, "tsproxy-dns").count("serving ")
    c.run("systemctl reload tsproxy-dns")
    wait_for(lambda: journal(c, "tsproxy-dns").count("serving ") > served,
             what="the DNS responder's reload line")
    assert c.run("systemctl is-active tsproxy-socks@fgpu.service tsproxy-dns.service"
                 ).stdout.split() == ["active", "active"]
