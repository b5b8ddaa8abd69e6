"""The instance's watchdog: notices when its network is taken away by hand and has systemd
rebuild it.

`ip netns del ts-NAME`, `nft delete table inet tsproxy-NAME` or `nft flush ruleset` leave
every unit of the instance "active": tailscaled and the proxy live on in a namespace no
longer pinned, without NAT or isolation rules, and a host that did not forward before
tsproxy forwards for everyone once the guard of forwarding.py is gone. Nothing in systemd
sees that, so tsproxy-watch@NAME.service (started with the instance, bound to it) looks
every INTERVAL seconds at what `up` made and, when a piece is missing or changed, restarts
tsproxy@NAME: `down` and `up` converge from any half-made state, and the instance's other
units restart with it. What it looks at is network.py's, what it judges health.py's, the
same as status and doctor.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from tsproxy_generator.vocabulary import INSTANCE, PROXY, TAILSCALED, netns_name, nft_table, unit

from . import health, systemd
from .errors import TsproxyError
from .network import Shape, look

INTERVAL = 2.0  # detection within 2 s, the rebuild in about 1 s more: well inside 10 s


def restart(name: str) -> bool:
    """Queue a restart of tsproxy@NAME and return at once, without waiting for the job: the
    restart stops this watchdog too (it is bound to the instance)."""
    try:
        with systemd.manager() as connection:
            connection.queue("restart", unit(INSTANCE, name))
    except TsproxyError as error:
        log(f"{name}: restart failed: {error}")
        return False
    return True


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def problems(name: str, made: Shape, now: Shape) -> list[str]:
    """What differs from the shape `up` left (empty: all is well)."""
    return [f.problem for f in health.network(name, now, made) if f.problem]


def run(name: str, interval: float = INTERVAL,
        probe: Callable[[str], Shape] = look, repair: Callable[[str], bool] = restart,
        sleep: Callable[[float], None] | None = None) -> None:
    """Watch until stopped; the first look is what `up` made (the unit starts after it).

    Between looks it waits on systemd (unless given `sleep`): a change of one of the
    instance's units, or the end of a job of theirs, brings the next look forward. Removing
    a namespace or an nft table tells systemd nothing, so the looks every `interval` stay."""
    waker = None
    if sleep is None:
        waker = systemd.Waker([unit(INSTANCE, name), unit(TAILSCALED, name),
                               unit(PROXY, name, ".socket"), unit(PROXY, name)],
                              lambda line: log(f"{name}: {line}"))
        sleep = waker.wait
    made = probe(name)
    # A piece already missing went between `up` and this start: repair it at once.
    found = problems(name, made, made)
    log(f"{name}: watching namespace {netns_name(name)} and nft table "
        f"inet {nft_table(name)} every {interval:g} s"
        + (", and at once when its units change" if waker else ""))
    try:
        while True:
            if found:
                log(f"{name}: {'; '.join(found)}: restarting {unit(INSTANCE, name, '')}")
                if repair(name):
                    return
            sleep(interval)
            found = problems(name, made, probe(name))
    finally:
        if waker is not None:
            waker.close()
