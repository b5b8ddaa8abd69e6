"""`GET /` on the proxy's port: one instance's status page for people, made when asked for.

- Health, by the same judgement as `tsproxy status`: status.judge gathers the facts and
  health.instance and first_problem judge them; the page shows the same line. The proxy runs
  as root, sandboxed, inside the tailnet's network namespace, so it gathers what it can see
  from there, honestly:
  - unit states over D-Bus (systemd.show), through systemd's private socket as `tsproxy
    status` does as root: a unix socket is found by its path, whatever the network
    namespace, and ProtectSystem= leaves it connectable;
  - tailscaled's LocalAPI status, on the socket the proxy already asks for names;
  - tailscaled installed: /usr is in sight, read-only.
  Not in sight: the host's side of the network (the veth's host end, the nft table, the
  forwarding guard) and who holds a port. In the namespace, interfaces and sockets are the
  namespace's own, and listing nftables takes a capability the proxy does not keep; looking
  anyway would judge a host end that is merely out of sight "gone". Those checks are left
  out (status.judge(host=False)) and the page says so under the verdict: the watchdog
  repairs them by itself, and `tsproxy status` on the gateway shows them. Without systemd
  there is no verdict at all, and the page says why.
- Peers, from the same LocalAPI answer: each with its OS, whether it is online, and a link
  `http://NAME.SUFFIX/` with the conf's suffix, which the PAC sends through this proxy (the
  resolver takes the peer's MagicDNS name). A name no URL could carry is shown unlinked.
- Traffic since the proxy started, from its own counters (Stats).

One HTML document: no JavaScript, no external assets, CSS inline. Everything from tailscaled
or a conf is escaped, and a Content-Security-Policy in the head allows no script at all, so
even text that slipped through could not run one.
"""

from __future__ import annotations

import asyncio
import time
from html import escape
from typing import TYPE_CHECKING, Any

from tsproxy_generator.addresses import is_host_name
from tsproxy_generator.model import TailnetConf

from .errors import TsproxyError
from .localapi import LocalAPI, LocalAPIError, key_expiry, peer_counts
from .proxy.stats import Stats

if TYPE_CHECKING:
    from .status import Status

LEFT_OUT = ("the host's side of its network (veth, nft table, forwarding guard) and who holds "
            "a port")
HEAD = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{title}</title>
<style>
body {{ font: 15px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 60em;
       padding: 0 1em; color: #222; background: #fafafa; }}
h1 {{ font-size: 1.6em; margin-bottom: 0.2em; }}
h2 {{ font-size: 1.15em; margin-top: 1.6em; }}
table {{ border-collapse: collapse; }}
th, td {{ text-align: left; padding: 0.25em 1em 0.25em 0; border-bottom: 1px solid #ddd; }}
td.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
.ok {{ color: #176b2c; }}
.bad {{ color: #b00020; }}
.unknown {{ color: #8a5a00; }}
#health {{ font-size: 1.2em; font-weight: bold; }}
.note, .meta {{ color: #666; font-size: 0.9em; }}
code {{ background: #eee; padding: 0 0.2em; }}
</style>
</head>
<body>
"""


async def served(conf: TailnetConf, stats: Stats, api: LocalAPI) -> str:
    """The page, with tailscaled and systemd asked now."""
    try:
        answer: dict[str, Any] | str = await api.status()
    except LocalAPIError as error:
        answer = str(error)
    # D-Bus calls block: in a thread, like the PAC's reading of confs.
    judged = await asyncio.to_thread(judge, conf, answer)
    return render(conf, stats, answer, judged)


def judge(conf: TailnetConf, answer: dict[str, Any] | str) -> Status | str:
    """The instance's status as `tsproxy status` judges it, less what only the host sees;
    or, when systemd cannot be asked, why there is no verdict."""
    # Imported when first asked for: status and pystemd would add ~40 ms to every start of
    # the proxy.
    from . import status, systemd
    from .health import units_of
    try:
        states = systemd.show(list(units_of(conf.name).values()))
    except TsproxyError as error:
        return str(error)
    return status.judge(conf, states, answer, host=False)


def render(conf: TailnetConf, stats: Stats, answer: dict[str, Any] | str,
           judged: Status | str, now: float | None = None) -> str:
    now = time.time() if now is None else now
    parts = [HEAD.format(title=escape(f"tsproxy: {conf.name}")),
             f"<h1>{escape(conf.name)}</h1>",
             f'<p class="meta">tsproxy instance, proxy on {escape(stats.listen)}, as of '
             f"{_when(now)}</p>",
             *health(conf, judged), *node(answer), *peers(conf.suffix, answer),
             *traffic(stats), "</body>\n</html>\n"]
    return "\n".join(parts)


def health(conf: TailnetConf, judged: Status | str) -> list[str]:
    if isinstance(judged, str):
        return ['<p id="health" class="unknown">Not judged: '
                f'<span id="problem">{escape(judged)}</span></p>']
    if judged.problem is None:
        verdict = '<p id="health" class="ok">Healthy</p>'
    else:
        verdict = ('<p id="health" class="bad">Unhealthy: '
                   f'<span id="problem">{escape(judged.problem)}</span></p>')
    warnings = [f"<li>{escape(line)}</li>" for line in judged.health]
    return [verdict,
            *(['<p>tailscaled says:</p>', '<ul id="warnings">', *warnings, "</ul>"]
              if warnings else []),
            f'<p class="note">Judged as <code>tsproxy status</code> judges it, except for '
            f"{LEFT_OUT}: the proxy cannot see those from inside the tailnet's namespace. "
            f"<code>tsproxy status {escape(conf.name)}</code> on the gateway shows them.</p>"]


def node(answer: dict[str, Any] | str) -> list[str]:
    """This gateway's node in the tailnet."""
    if isinstance(answer, str):
        return ["<h2>tailscaled</h2>", f'<p class="bad">{escape(answer)}</p>']
    me = answer.get("Self") or {}
    tailnet = (answer.get("CurrentTailnet") or {}).get("Name") or answer.get("MagicDNSSuffix")
    rows = [("State", answer.get("BackendState")), ("Tailnet", tailnet),
            ("Node", str(me.get("DNSName") or "").rstrip(".") or me.get("HostName")),
            ("Addresses", ", ".join(str(ip) for ip in answer.get("TailscaleIPs") or [])),
            ("Key expires", key_expiry(answer))]
    return ["<h2>tailscaled</h2>", '<table id="node">',
            *(f"<tr><th>{label}</th><td>{escape(str(value or '-'))}</td></tr>"
              for label, value in rows), "</table>"]


def peers(suffix: str, answer: dict[str, Any] | str) -> list[str]:
    if isinstance(answer, str):
        return []
    found = sorted((answer.get("Peer") or {}).values(), key=label)
    total, online = peer_counts(answer)  # as `tsproxy status` counts them
    if not found:
        return ["<h2>Peers</h2>", "<p>No peers.</p>"]
    return [f"<h2>Peers ({online} of {total} online)</h2>", '<table id="peers">',
            "<tr><th>Name</th><th>State</th><th>OS</th><th>Addresses</th></tr>",
            *(peer_row(suffix, peer) for peer in found), "</table>"]


def label(peer: dict[str, Any]) -> str:
    """The name `NAME.SUFFIX` finds the peer by (names.peer_addresses): its MagicDNS name's
    first label, else its HostName."""
    magic = str(peer.get("DNSName") or "").partition(".")[0]
    return (magic or str(peer.get("HostName") or "")).lower()


def peer_row(suffix: str, peer: dict[str, Any]) -> str:
    name = label(peer)
    host = f"{name}.{suffix}"
    shown = (f'<a href="{escape(f"http://{host}/")}">{escape(host)}</a>'
             if "." not in name and is_host_name(host) else escape(name or "?"))
    state = ('<td class="ok">online</td>' if peer.get("Online")
             else '<td class="bad">offline</td>')
    addresses = ", ".join(str(ip) for ip in peer.get("TailscaleIPs") or [])
    return (f"<tr><td>{shown}</td>{state}<td>{escape(str(peer.get('OS') or '-'))}</td>"
            f"<td>{escape(addresses)}</td></tr>")


def traffic(stats: Stats) -> list[str]:
    rows = [("Connections", stats.total, "connections"),
            ("Open now", stats.active, "open"), ("Tunnels relaying", stats.tunnels, "tunnels"),
            ("Bytes up", stats.bytes_up, "up"), ("Bytes down", stats.bytes_down, "down")]
    return [f"<h2>Traffic since {_when(stats.started)}</h2>", '<table id="traffic">',
            *(f'<tr><th>{title}</th><td class="n" id="{key}">{count:,}</td></tr>'
              for title, count, key in rows), "</table>",
            '<p class="note">Bytes count when their connection ends; this page is one of the '
            "open connections.</p>"]


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))
