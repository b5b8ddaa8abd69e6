#!/usr/bin/python3
"""Render the unit templates: `units/render.py OUTDIR` -> OUTDIR/<unit> for every *.j2.

Run when the package is built (and by the tests), never at boot: the generator only
instantiates the rendered templates, so jinja2 stays off the boot path.
"""

from __future__ import annotations

import os
import sys

import jinja2

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from tsproxy_generator import paths  # noqa: E402  (needs the path set above)


def render(out_dir: str, overrides: dict[str, str] | None = None) -> list[str]:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True)
    names = {k: v for k, v in vars(paths).items() if k.isupper()} | (overrides or {})
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for template in sorted(os.listdir(HERE)):
        if template.endswith(".j2") and not template.startswith("_"):
            target = os.path.join(out_dir, template[: -len(".j2")])
            with open(target, "w", encoding="utf-8") as file:
                file.write(env.get_template(template).render(names))
            written.append(target)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: units/render.py OUTDIR")
    for path in render(sys.argv[1]):
        print(path)
