"""One proxy auto-config (PAC) file for every instance.

Names equal to or under a tailnet's suffix or one of its dns_domains go to that tailnet's
proxy; everything else goes DIRECT. The proxy serves it at /proxy.pac, built from the confs
on every request (so it is never older than the confs), and `tsproxy client --for pac`
prints the same text.

The JavaScript uses nothing but string methods every PAC engine has (Chromium's V8, Firefox,
macOS CFNetwork, pacparser's SpiderMonkey), no helper of the PAC API: those differ between
engines (dnsDomainIs is a plain suffix test, so "xfgpu" would match "fgpu" in some of them).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from tsproxy_generator.addresses import Address
from tsproxy_generator.model import Listen, TailnetConf

CONTENT_TYPE = "application/x-ns-proxy-autoconfig"
PATH = "/proxy.pac"


@dataclass(frozen=True)
class Route:
    """Where one tailnet's names go."""
    name: str  # the instance, for a comment
    domains: tuple[str, ...]  # its suffix, then its dns_domains
    proxy: Listen  # where clients reach its proxy


def reach(listen: Listen, gateway: Address | None) -> Listen | None:
    """The address clients use for a socket bound to `listen`: the address itself, or for an
    unspecified one (0.0.0.0, ::) the gateway's address with the same port. None when that
    cannot be known (no gateway) or cannot work (an IPv6 gateway for an IPv4-only socket; a
    socket on :: takes IPv4 too)."""
    if not listen.address.is_unspecified:
        return listen
    if gateway is None or (listen.address.version == 4 and gateway.version == 6):
        return None
    return Listen(gateway, listen.port)


def routes(confs: Iterable[TailnetConf],
           proxy: Callable[[TailnetConf], Listen | None]) -> list[Route]:
    """One Route per conf whose proxy `proxy` can name; the others are left out."""
    found = []
    for conf in confs:
        address = proxy(conf)
        if address is not None:
            found.append(Route(conf.name, (conf.suffix, *conf.dns_domains), address))
    return found


def proxy_string(proxy: Listen) -> str:
    """What FindProxyForURL returns for one tailnet, best first. SOCKS5 lets the proxy resolve
    the name; plain SOCKS is for engines that know no "SOCKS5" keyword (older macOS, which
    then still speaks version 5); PROXY (CONNECT, and absolute-form requests for http://
    URLs, on the same port) is the last resort for clients without SOCKS."""
    return f"SOCKS5 {proxy}; SOCKS {proxy}; PROXY {proxy}"


def render(found: Sequence[Route]) -> str:
    lines = [
        "// tsproxy: each tailnet's names through its proxy, everything else DIRECT.",
        "function FindProxyForURL(url, host) {",
        "  var name = host.toLowerCase();",
        '  if (name.charAt(name.length - 1) == ".") {',
        "    name = name.substring(0, name.length - 1);",
        "  }",
    ]
    for route in found:
        tests = " || ".join(f"tsproxyIn(name, {json.dumps(d)})" for d in route.domains)
        lines += [f"  // {route.name}",
                  f"  if ({tests}) {{",
                  f"    return {json.dumps(proxy_string(route.proxy))};",
                  "  }"]
    lines += [
        '  return "DIRECT";',
        "}",
        "",
        "// name is domain itself or a name under it (a label boundary, not just a suffix).",
        "function tsproxyIn(name, domain) {",
        "  if (name == domain) {",
        "    return true;",
        "  }",
        "  var tail = name.length - domain.length - 1;",
        '  return tail > 0 && name.substring(tail) == "." + domain;',
        "}",
    ]
    return "\n".join(lines) + "\n"


def served(confs: Iterable[TailnetConf], own: TailnetConf, arrival: Listen) -> str:
    """The PAC a proxy hands out: its own tailnet at the address the request arrived on
    (right even when it listens on 0.0.0.0), the others at their listen addresses, or at the
    arrival address with their own port when they listen on an unspecified address."""
    confs = list(confs)
    if not any(conf.name == own.name for conf in confs):
        # The running proxy serves its tailnet whatever its file says now (bad since it
        # started, or given with --conf from elsewhere).
        confs.insert(0, own)

    def proxy(conf: TailnetConf) -> Listen | None:
        if conf.name == own.name:
            return arrival
        return reach(conf.listen, arrival.address)

    return render(routes(confs, proxy))
