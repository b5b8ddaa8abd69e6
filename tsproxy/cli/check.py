"""`tsproxy check [FILE...]`: judge confs exactly as the generator does at boot."""

from __future__ import annotations

import argparse
import sys

from tsproxy_generator.config import conf_paths, load_all

from ..instances import conf_dir


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="*", metavar="FILE",
                        help="confs to check (default: every *.conf in /etc/tsproxy.d)")


def run(args: argparse.Namespace) -> int:
    paths = args.files or conf_paths(conf_dir())
    if not paths:
        print(f"no confs in {conf_dir()}")
        return 0
    good, errors = load_all(paths)
    for conf in good:
        print(f"{conf.path}: ok: listen {conf.listen}, suffix .{conf.suffix}, "
              f"netns {conf.netns}, veth {conf.veth_subnet}"
              f"{'' if conf.autostart else ', no autostart'}")
    for error in errors:
        print(error, file=sys.stderr)
    return 1 if errors else 0
