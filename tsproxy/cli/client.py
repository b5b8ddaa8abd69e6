"""`tsproxy client [--for FORM] [--gateway IP] [NAME...]`: print ready-to-paste setup for the
machines that use the proxies (resolver files, ssh, Firefox, shell, the PAC file)."""

from __future__ import annotations

import argparse
import ipaddress
import sys

from tsproxy_generator.addresses import Address
from tsproxy_generator.model import TailnetConf

from .. import snippets
from ..errors import TsproxyError
from ..instances import conf_dir, get_instance, load_instances


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--for", dest="form", choices=list(snippets.FORMS),
                        help="one kind of client (default: every form, with headings)")
    parser.add_argument("--gateway", metavar="IP",
                        help="the address clients reach this host at, for instances that "
                             "listen on 0.0.0.0 or ::")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="instances (default: every good conf)")


def run(args: argparse.Namespace) -> int:
    gateway = parse_gateway(args.gateway) if args.gateway else None
    found = snippets.clients(chosen(args.names), gateway)
    text = snippets.render(args.form, found) if args.form else snippets.render_all(found)
    sys.stdout.write(text)
    return 0


def parse_gateway(text: str) -> Address:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        raise TsproxyError(f"--gateway: {text!r} is not an IP address") from None


def chosen(names: list[str]) -> list[TailnetConf]:
    if names:
        return [get_instance(name) for name in dict.fromkeys(names)]
    good, errors = load_instances()
    for error in errors:  # on stderr: the setup on stdout stays ready to paste
        print(f"tsproxy: skipped: {error}", file=sys.stderr)
    if not good:
        raise TsproxyError(f"no good confs in {conf_dir()} (see tsproxy check)")
    return good
