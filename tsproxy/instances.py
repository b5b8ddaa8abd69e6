"""Finding instance confs at run time, with the same rules the generator applied at boot."""

from __future__ import annotations

import os

from tsproxy_generator.config import ConfigError, TailnetConf, conf_paths, load_all
from tsproxy_generator.paths import CONF_DIR

from .errors import TsproxyError


def conf_dir() -> str:
    # Tests point this at a temporary directory; installed systems never set it.
    return os.environ.get("TSPROXY_CONF_DIR", CONF_DIR)


def load_instances() -> tuple[list[TailnetConf], list[ConfigError]]:
    return load_all(conf_paths(conf_dir()))


def get_instance(name: str) -> TailnetConf:
    """The conf of one instance, judged beside all the others (clashes count)."""
    good, errors = load_instances()
    for conf in good:
        if conf.name == name:
            return conf
    for error in errors:
        if os.path.basename(error.path) == f"{name}.conf":
            raise TsproxyError(str(error))
    path = os.path.join(conf_dir(), f"{name}.conf")
    raise TsproxyError(f"no instance {name!r}: {path} does not exist")
