"""The names one instance NAME goes by, spelled here once: its units, the generator's
drop-ins and links, its directories, namespace, veth and nft table.

The generator (at boot) and the runtime both name things through this module, so a rename
is one edit. On the boot path: standard library only.
"""

from __future__ import annotations

import os

from . import paths

# The shipped template units, one instance each per NAME: unit(TEMPLATE, NAME).
INSTANCE = "tsproxy"  # the instance's network (`tsproxy up` / `down`)
TAILSCALED = "tsproxy-tailscaled"
PROXY = "tsproxy-socks"  # a .socket in the host's namespace, its .service in the instance's
WATCH = "tsproxy-watch"
LOGIN = "tsproxy-login"
# The one DNS responder, every instance's.
DNS_SOCKET = "tsproxy-dns.socket"
DNS_SERVICE = "tsproxy-dns.service"

DROP_IN = "50-tsproxy.conf"  # the generator's drop-in in UNIT.d/
ENABLED_BY = "multi-user.target"  # autostart: a link in its .wants/
PROXY_STATS_DIR = "/run/tsproxy-socks"  # + /NAME: the proxy's counters (RuntimeDirectory)
PROXY_RELOAD_VERDICT = "reload.json"  # in the same directory: how the last reload went
# The DNS responder's query counters (its RuntimeDirectory), read by each proxy's /metrics.
DNS_COUNTS = "/run/tsproxy-dns/queries.json"


def unit(template: str, name: str, kind: str = ".service") -> str:
    """The instance `name` of a template unit: unit(PROXY, "fgpu", ".socket") is
    tsproxy-socks@fgpu.socket; kind "" gives the short form people type (tsproxy@fgpu)."""
    return f"{template}@{name}{kind}"


def drop_in(directory: str, unit_name: str) -> str:
    """The generator's drop-in for `unit_name` under its output `directory`."""
    return os.path.join(directory, f"{unit_name}.d", DROP_IN)


def wants(directory: str, unit_name: str, wanted: str) -> str:
    """The link by which `unit_name` wants `wanted`, under the generator's `directory`."""
    return os.path.join(directory, f"{unit_name}.wants", wanted)


def netns_name(name: str) -> str:
    """The instance's network namespace, and the host side of its veth: `ip link` shows
    whose it is (interface names hold 15 bytes, hence 12 for NAME)."""
    return f"ts-{name}"


def netns_etc(name: str, etc: str = paths.NETNS_ETC_DIR) -> str:
    """iproute2's per-namespace /etc (resolv.conf) of the instance."""
    return os.path.join(etc, netns_name(name))


def nft_table(name: str) -> str:
    """The instance's nftables table (family inet), and the comment on its rules in others."""
    return f"tsproxy-{name}"


def default_hostname(name: str) -> str:
    """The instance's node name in its tailnet when the conf sets no hostname."""
    return f"tsproxy-{name}"


def state_dir(name: str, parent: str = paths.STATE_DIR) -> str:
    """tailscaled's --statedir (tsproxy-tailscaled@.service's StateDirectory)."""
    return os.path.join(parent, name)


def tailscaled_socket(name: str, parent: str = paths.RUN_DIR) -> str:
    """The LocalAPI socket of the instance's tailscaled (in its RuntimeDirectory)."""
    return os.path.join(parent, name, "tailscaled.sock")
