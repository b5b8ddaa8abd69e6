"""Finding instance confs at run time, with the same rules the generator applied at boot."""

from __future__ import annotations

import os

from tsproxy_generator import vocabulary
from tsproxy_generator.config import conf_paths, instance_name, load_all
from tsproxy_generator.model import ConfigError, TailnetConf
from tsproxy_generator.paths import CONF_DIR, RUN_DIR, STATE_DIR

from .errors import TsproxyError


def conf_dir() -> str:
    # Tests point this at a temporary directory; installed systems never set it.
    return os.environ.get("TSPROXY_CONF_DIR", CONF_DIR)


def run_dir() -> str:
    # Likewise for the tailscaled sockets, RUN_DIR/NAME/tailscaled.sock.
    return os.environ.get("TSPROXY_RUN_DIR", RUN_DIR)


def tailscaled_socket(name: str, directory: str | None = None) -> str:
    """The LocalAPI socket of an instance's tailscaled, under `directory` (default run_dir())."""
    return vocabulary.tailscaled_socket(name, directory or run_dir())


def state_dir(name: str) -> str:
    """An instance's tailscaled --statedir (tsproxy-tailscaled@.service's StateDirectory)."""
    # Tests point the parent at a temporary directory; installed systems never set it.
    return vocabulary.state_dir(name, os.environ.get("TSPROXY_STATE_DIR", STATE_DIR))


def load_instances() -> tuple[list[TailnetConf], list[ConfigError]]:
    return load_all(conf_paths(conf_dir()))


def get_instance(name: str) -> TailnetConf:
    """The conf of one instance, judged beside all the others (clashes count)."""
    checked_name(name)
    good, errors = load_instances()
    for conf in good:
        if conf.name == name:
            return conf
    for error in errors:
        if os.path.basename(error.path) == f"{name}.conf":
            raise TsproxyError(str(error))
    path = os.path.join(conf_dir(), f"{name}.conf")
    raise TsproxyError(f"no instance {name!r}: {path} does not exist")


def checked_name(name: str) -> str:
    """NAME as given on a command line, when it could be an instance's: it becomes
    interface, namespace, unit and path names, so "../x" or "x.conf" never pass."""
    try:
        valid = instance_name(f"{name}.conf") == name
    except ConfigError as error:
        raise TsproxyError(error.message) from None
    if not valid:
        raise TsproxyError(f'instance name "{name}" must be 1-12 of a-z, 0-9 and -, '
                           "starting with a letter")
    return name
