"""The watchdog's judgement: what counts as the instance's network taken away, and that one
repair is asked for, not one per look. (The booted system test deletes them for real.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tsproxy import network, watch
from tsproxy.network import Shape

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def listing(rules: dict[str, int]) -> str:
    """`nft -j list table inet tsproxy-fgpu` as nft 1.0 prints it."""
    items: list[dict[str, object]] = [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
                                      {"table": {"family": "inet", "name": "tsproxy-fgpu"}}]
    for chain, count in rules.items():
        items.append({"chain": {"family": "inet", "table": "tsproxy-fgpu", "name": chain}})
        items += [{"rule": {"family": "inet", "table": "tsproxy-fgpu", "chain": chain,
                            "handle": n, "expr": []}} for n in range(count)]
    return json.dumps({"nftables": items})


WHOLE = {"postrouting": 1, "forward": 6, "input": 2}
MADE = Shape(netns=(4, 4026532290), veth=True, table=network.table_shape(listing(WHOLE)))


def test_table_shape() -> None:
    assert network.table_shape(listing(WHOLE)) == (("forward", 6), ("input", 2), ("postrouting", 1))
    # Flushed: the chains stay, the rules go.
    assert network.table_shape(listing(dict.fromkeys(WHOLE, 0))) == (
        ("forward", 0), ("input", 0), ("postrouting", 0))
    assert network.table_shape(None) is None
    assert network.table_shape("not json") is None


@pytest.mark.parametrize("now, expected", [
    (MADE, []),
    (Shape(None, True, MADE.table), ["network namespace ts-fgpu is gone"]),
    (Shape((4, 1), True, MADE.table), ["network namespace ts-fgpu was replaced"]),
    (Shape(MADE.netns, False, MADE.table), ["veth ts-fgpu is gone"]),
    (Shape(MADE.netns, True, None), ["nft table inet tsproxy-fgpu is gone"]),
    (Shape(MADE.netns, True, network.table_shape(listing(dict.fromkeys(WHOLE, 0)))),
     ["nft table inet tsproxy-fgpu was changed or flushed"]),
    # `ip netns del` with `nft flush ruleset`: every piece named.
    (Shape(None, False, None), ["network namespace ts-fgpu is gone", "veth ts-fgpu is gone",
                                "nft table inet tsproxy-fgpu is gone"]),
])
def test_problems(now: Shape, expected: list[str]) -> None:
    assert watch.problems("fgpu", MADE, now) == expected


GUARD = (("forward", 3),)
GUARDED = Shape(MADE.netns, True, MADE.table, guard_due=True, guard=GUARD)


@pytest.mark.parametrize("made, now, expected", [
    (GUARDED, GUARDED, []),
    # The instance set changes the guard's veth names, never its shape.
    (GUARDED, Shape(MADE.netns, True, MADE.table, guard_due=True, guard=GUARD), []),
    (GUARDED, Shape(MADE.netns, True, MADE.table, guard_due=True),
     ["nft table ip tsproxy-forward-guard is gone"]),
    (GUARDED, Shape(MADE.netns, True, MADE.table, guard_due=True, guard=(("forward", 0),)),
     ["nft table ip tsproxy-forward-guard was changed or flushed"]),
    # Gone before the watchdog's first look: due is enough to know it is missing.
    (Shape(MADE.netns, True, MADE.table, guard_due=True),
     Shape(MADE.netns, True, MADE.table, guard_due=True),
     ["nft table ip tsproxy-forward-guard is gone"]),
    # The host forwarded before tsproxy: no guard is due, none is looked for.
    (MADE, MADE, []),
])
def test_guard_problems(made: Shape, now: Shape, expected: list[str]) -> None:
    assert watch.problems("fgpu", made, now) == expected


def run_watch(looks: list[Shape], repairs: list[bool]) -> tuple[list[str], list[float]]:
    """Run the loop over these looks; returns the repairs asked for and the sleeps."""
    asked: list[str] = []
    slept: list[float] = []
    shapes = iter(looks)

    def repair(name: str) -> bool:
        asked.append(name)
        return repairs.pop(0)

    def sleep(seconds: float) -> None:
        slept.append(seconds)

    watch.run("fgpu", 0.5, probe=lambda name: next(shapes), repair=repair, sleep=sleep)
    return asked, slept


def test_repairs_once_when_something_goes(capsys: pytest.CaptureFixture[str]) -> None:
    gone = Shape(None, True, MADE.table)
    asked, slept = run_watch([MADE, MADE, MADE, gone], [True])
    assert asked == ["fgpu"] and slept == [0.5, 0.5, 0.5]
    assert capsys.readouterr().err.splitlines() == [
        "fgpu: watching namespace ts-fgpu and nft table inet tsproxy-fgpu every 0.5 s",
        "fgpu: network namespace ts-fgpu is gone: restarting tsproxy@fgpu"]


def test_a_failed_repair_is_tried_again() -> None:
    flushed = Shape(MADE.netns, True, ())
    asked, _ = run_watch([MADE, flushed, flushed], [False, True])
    assert asked == ["fgpu", "fgpu"]


def test_missing_at_start_is_repaired_at_once() -> None:
    asked, slept = run_watch([Shape(MADE.netns, True, None)], [True])
    assert asked == ["fgpu"] and slept == []


def test_cli_refuses_bad_arguments() -> None:
    def tsproxy(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tsproxy", "watch", *args], cwd=REPO,
                              env={"PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                              timeout=30)

    for name in ("../etc", "Bad_Name", "fgpu.conf"):
        done = tsproxy(name)
        assert done.returncode == 1
        assert done.stderr == (f'tsproxy: instance name "{name}" must be 1-12 of a-z, 0-9 and -, '
                               "starting with a letter\n")
    done = tsproxy("fgpu", "--interval", "0")
    assert done.returncode == 1
    assert done.stderr == "tsproxy: --interval: 0 is not a positive number of seconds\n"
