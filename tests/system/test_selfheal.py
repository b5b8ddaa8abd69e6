"""Self-healing in a booted Debian 12 and 13: an instance whose namespace is deleted by hand
(`ip netns del`) or whose nft table is deleted or flushed comes back by itself, whole,
within 10 s, and a killed tailscaled or proxy is restarted."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from gateway import HOST_TS_IP, INTERNET, UPLINK, bring_up_network, install
from nspawn import Container, wait_for

pytestmark = pytest.mark.system

HEAL_WITHIN = 10.0  # seconds: the self-healing goal
PROXY = f"socks5h://{HOST_TS_IP}:11080"


def run_ok(c: Container, cmd: str) -> str | None:
    done = c.run(cmd, check=False)
    return done.stdout if done.returncode == 0 else None


def health(c: Container, table: str) -> str:
    """'' when the instance is whole, else the first thing found missing."""
    for unit in ("tsproxy@fgpu.service", "tsproxy-tailscaled@fgpu.service",
                 "tsproxy-socks@fgpu.socket", "tsproxy-watch@fgpu.service"):
        if run_ok(c, f"systemctl is-active {unit}") is None:
            return f"{unit} not active"
    if run_ok(c, "nft list table inet tsproxy-fgpu") != table:
        return "nft table not as `up` made it"
    # tailscaled runs in the namespace that /run/netns/ts-fgpu pins now, not an orphan.
    pid = (run_ok(c, "systemctl show -P MainPID tsproxy-tailscaled@fgpu") or "").strip()
    if (run_ok(c, f"ip netns identify {pid}") or "").strip() != "ts-fgpu":
        return "tailscaled is not in ts-fgpu"
    if run_ok(c, "ip -n ts-fgpu link show tailscale0") is None:
        return "no tailscale0 in ts-fgpu"
    # NAT out of the namespace, as the fake internet sees it.
    if run_ok(c, f"ip netns exec ts-fgpu curl -sS -m 2 http://{INTERNET}:8080/") != UPLINK:
        return "no egress from ts-fgpu"
    # The proxy answers from inside the namespace: a policy refusal is an answer.
    curl = c.run(f"curl -sS -m 3 -x {PROXY} http://127.0.0.1.fgpu/", check=False)
    if curl.returncode != 97 or "(2)" not in curl.stderr:
        return f"proxy: {curl.stderr.strip()}"
    return ""


def assert_heals(c: Container, break_it: str, table: str, reason: str) -> float:
    invocation = c.run("systemctl show -P InvocationID tsproxy@fgpu").stdout
    started = time.monotonic()
    c.run(break_it)
    assert health(c, table) != "", f"{break_it} broke nothing"
    # The repair is a restart of tsproxy@fgpu: wait for the new start first, so the old,
    # still whole-looking state cannot pass for a healed one. (Namespace inode numbers are
    # reused at once, so they cannot tell.)
    wait_for(lambda: c.run("systemctl show -P InvocationID tsproxy@fgpu").stdout != invocation,
             timeout=HEAL_WITHIN, interval=0.1, what=f"tsproxy@fgpu restarted after {break_it}")
    last = wait_for(lambda: health(c, table) == "", timeout=HEAL_WITHIN, interval=0.2,
                    what=f"healed after {break_it} (now: {health(c, table)})")
    elapsed = time.monotonic() - started
    assert last and elapsed <= HEAL_WITHIN, (break_it, elapsed)
    journal = c.run("journalctl -b -u tsproxy-watch@fgpu --no-pager -o cat").stdout
    assert f"fgpu: {reason}: restarting tsproxy@fgpu" in journal, journal
    return elapsed


def test_namespace_and_nft_table_come_back(booted_debian: Container, tailscale_deb: Path) -> None:
    c = booted_debian
    bring_up_network(c)
    install(c, tailscale_deb, {"fgpu.conf": f"listen = {HOST_TS_IP}:11080\n"})
    c.run("systemctl daemon-reload && systemctl start tsproxy@fgpu")
    # The watchdog's unit passes systemd's own checks.
    verify = c.run("systemd-analyze verify --generators=yes --man=no tsproxy-watch@fgpu.service", check=False)
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr
    table = c.run("nft list table inet tsproxy-fgpu").stdout
    wait_for(lambda: health(c, table) == "", what=f"fgpu up (now: {health(c, table)})")

    timings = {}
    for break_it, reason in (
            ("ip netns del ts-fgpu", "network namespace ts-fgpu is gone"),
            ("nft delete table inet tsproxy-fgpu", "nft table inet tsproxy-fgpu is gone"),
            ("nft flush table inet tsproxy-fgpu",
             "nft table inet tsproxy-fgpu was changed or flushed"),
            # The container did not forward before: the guard of forwarding.py goes too.
            ("nft flush ruleset", "nft table inet tsproxy-fgpu is gone; "
                                  "nft table ip tsproxy-forward-guard is gone"),
            ("ip link del ts-fgpu", "veth ts-fgpu is gone")):
        timings[break_it] = assert_heals(c, break_it, table, reason)
    print("healed in:", {k: round(v, 1) for k, v in timings.items()})
    # Five repairs, no more: a whole instance is left alone.
    journal = c.run("journalctl -b -u tsproxy-watch@fgpu --no-pager -o cat").stdout
    assert journal.count(": restarting tsproxy@fgpu") == len(timings), journal


def test_crashed_daemons_are_restarted(booted_debian: Container, tailscale_deb: Path) -> None:
    c = booted_debian
    bring_up_network(c)
    install(c, tailscale_deb, {"fgpu.conf": f"listen = {HOST_TS_IP}:11080\n"})
    c.run("systemctl daemon-reload && systemctl start tsproxy@fgpu")
    table = c.run("nft list table inet tsproxy-fgpu").stdout
    wait_for(lambda: health(c, table) == "", what=f"fgpu up (now: {health(c, table)})")
    for unit in ("tsproxy-tailscaled@fgpu", "tsproxy-socks@fgpu", "tsproxy-dns"):
        pid = c.run(f"systemctl show -P MainPID {unit}").stdout.strip()
        if pid == "0":  # socket-activated and not asked yet
            c.run(f"systemctl start {unit}")
            pid = c.run(f"systemctl show -P MainPID {unit}").stdout.strip()
        c.run(f"kill -9 {pid}")
        wait_for(lambda unit=unit, pid=pid: c.run(f"systemctl show -P MainPID {unit}")
                 .stdout.strip() not in ("0", pid) and run_ok(c, f"systemctl is-active {unit}"),
                 timeout=HEAL_WITHIN, what=f"{unit} restarted")
    wait_for(lambda: health(c, table) == "", timeout=HEAL_WITHIN,
             what=f"fgpu whole again (now: {health(c, table)})")
