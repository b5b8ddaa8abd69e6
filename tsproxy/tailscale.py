"""Talking to one instance's tailscaled through the official `tailscale` CLI."""

from __future__ import annotations

import json
import os
import subprocess

from tsproxy_generator import paths
from tsproxy_generator.model import TailnetConf
from tsproxy_generator.vocabulary import INSTANCE, unit

from .errors import TsproxyError
from .instances import tailscaled_socket


def cli(conf: TailnetConf) -> list[str]:
    """`tailscale` aimed at this instance's daemon (the socket works from the host)."""
    binary = os.environ.get("TSPROXY_TAILSCALE", paths.TAILSCALE)
    if not os.path.exists(binary):
        raise TsproxyError(f"{binary} not found: install the tailscale package")
    socket = tailscaled_socket(conf.name)
    if not os.path.exists(socket):
        raise TsproxyError(f"{conf.name}: tailscaled is not running ({socket} is missing); "
                           f"start it with: systemctl start {unit(INSTANCE, conf.name, '')}")
    return [binary, f"--socket={socket}"]


def backend_state(conf: TailnetConf) -> str:
    result = subprocess.run([*cli(conf), "status", "--json"], capture_output=True, text=True,
                            timeout=15)
    try:
        return str(json.loads(result.stdout)["BackendState"])
    except (ValueError, KeyError):
        raise TsproxyError(f"{conf.name}: tailscale status failed: "
                           f"{result.stderr.strip() or result.stdout.strip()}") from None


def pref_flags(conf: TailnetConf) -> list[str]:
    """The settings a conf asks of its node, for `tailscale up` and `tailscale set`.

    DNS is never accepted: the namespace keeps the resolv.conf tsproxy made for it, and
    names under the suffix are answered by tsproxy itself.
    """
    return ["--accept-dns=false", f"--accept-routes={str(conf.accept_routes).lower()}",
            f"--hostname={conf.hostname}"]


def up_flags(conf: TailnetConf, authkey_file: str | None) -> list[str]:
    flags = ["--reset", *pref_flags(conf)]  # --reset: the conf is the whole truth
    if conf.login_server:
        flags.append(f"--login-server={conf.login_server}")
    if authkey_file:
        flags.append(f"--auth-key=file:{authkey_file}")
    return flags
