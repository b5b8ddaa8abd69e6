"""`tsproxy list`: every conf, whether the generator has turned it into units (and since its
last change), whether it starts at boot, and whether it runs now."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence

from tsproxy_generator import vocabulary
from tsproxy_generator.config import conf_paths, load_all
from tsproxy_generator.vocabulary import ENABLED_BY, INSTANCE, unit, wants

from .. import systemd
from ..instances import conf_dir

GENERATOR_DIR = "/run/systemd/generator"  # where systemd runs the generator into


def generator_dir() -> str:
    # Tests point this at a temporary directory; installed systems never set it.
    return os.environ.get("TSPROXY_GENERATOR_DIR", GENERATOR_DIR)


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def run(args: argparse.Namespace) -> int:
    paths = conf_paths(conf_dir())
    good, errors = load_all(paths)
    judged: dict[str, str | None] = {conf.path: None for conf in good}
    for error in errors:  # a conf's first problem
        judged.setdefault(error.path, str(error))
    names = {path: os.path.basename(path)[: -len(".conf")] for path in paths}
    states = systemd.show([unit(INSTANCE, name) for name in names.values()])
    rows = []
    for path in paths:
        name = names[path]
        rows.append({"name": name, "conf": path, "error": judged.get(path),
                     "generated": generated(name, path),
                     "autostart": os.path.lexists(
                         wants(generator_dir(), ENABLED_BY, unit(INSTANCE, name))),
                     "state": states[unit(INSTANCE, name)].get("ActiveState", "?")})
    if args.json:
        print(json.dumps(rows, indent=1))
    elif not rows:
        print(f"no confs in {conf_dir()}")
    else:
        print(table(rows))
    return 0


def generated(name: str, path: str) -> str:
    """yes; stale (the conf changed since: daemon-reload); no (bad, or never reloaded)."""
    drop_in = vocabulary.drop_in(generator_dir(), unit(INSTANCE, name))
    try:
        made = os.stat(drop_in).st_mtime_ns
    except OSError:
        return "no"
    try:
        changed = os.stat(path).st_mtime_ns
    except OSError:
        return "stale"
    return "yes" if made >= changed else "stale"


def table(rows: Sequence[Mapping[str, object]]) -> str:
    header = ["NAME", "GENERATED", "AUTOSTART", "STATE", "CONF"]
    cells = [header] + [[str(r["name"]), str(r["generated"]), "yes" if r["autostart"] else "no",
                         str(r["state"]), str(r["error"] or "ok")] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header) - 1)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(line, widths, strict=False)),
                                line[-1]]).rstrip() for line in cells)
