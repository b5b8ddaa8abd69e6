"""`tsproxy exec` and `tsproxy tailscale`: their words, their refusals, and the command each
would become (os.execvp is replaced; tests/netns/test_netns_host_helpers.py runs them for real)."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tsproxy import netns
from tsproxy.cli import main

pytestmark = pytest.mark.unit


class Exec(Exception):
    """Raised by the stand-in execvp: the process tsproxy would have become."""

    def __init__(self, argv: list[str], sigpipe: object) -> None:
        super().__init__(argv)
        self.argv = argv
        self.sigpipe = sigpipe


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """One conf, fgpu, with its tailscaled socket and namespace there; root; no real exec."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf/fgpu.conf").write_text("listen = 100.121.76.21:11080\n")
    (tmp_path / "run/fgpu").mkdir(parents=True)
    (tmp_path / "netns").mkdir()
    (tmp_path / "netns/ts-fgpu").touch()
    tailscale = tmp_path / "tailscale"
    tailscale.touch(mode=0o755)
    monkeypatch.setenv("TSPROXY_CONF_DIR", str(tmp_path / "conf"))
    monkeypatch.setenv("TSPROXY_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("TSPROXY_TAILSCALE", str(tailscale))
    monkeypatch.setattr(netns, "NETNS_RUN_DIR", str(tmp_path / "netns"))
    monkeypatch.setattr(os, "geteuid", lambda: 0)

    def execvp(file: str, argv: list[str]) -> None:
        assert file == argv[0]
        raise Exec(argv, signal.getsignal(signal.SIGPIPE))
    monkeypatch.setattr(os, "execvp", execvp)
    # replace_with resets SIGPIPE for the command; pytest's own process keeps Python's.
    before = signal.getsignal(signal.SIGPIPE)
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(tmp_path / "run/fgpu/tailscaled.sock"))
        yield tmp_path
    signal.signal(signal.SIGPIPE, before)


def becomes(*argv: str) -> list[str]:
    """The command line tsproxy ARGV would exec."""
    with pytest.raises(Exec) as done:
        main(list(argv))
    assert done.value.sigpipe == signal.SIG_DFL
    return done.value.argv


def refusal(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    assert captured.out == ""
    return code, captured.err


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> list[str]:
    with pytest.raises(SystemExit) as done:
        main(list(argv))
    assert done.value.code == 2
    return capsys.readouterr().err.splitlines()


def test_exec_runs_the_words_after_the_separator_in_the_namespace(world: Path) -> None:
    assert becomes("exec", "fgpu", "--", "ping", "-c", "1", "100.64.0.7") == [
        "ip", "netns", "exec", "ts-fgpu", "ping", "-c", "1", "100.64.0.7"]
    # Everything after the first --, another -- and -h included, is the command's.
    assert becomes("exec", "fgpu", "--", "sh", "-c", "echo -- -h", "--", "-h") == [
        "ip", "netns", "exec", "ts-fgpu", "sh", "-c", "echo -- -h", "--", "-h"]


def test_exec_wants_a_name_a_separator_and_a_command(world: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    usage = "usage: tsproxy exec [-h] NAME -- CMD [ARG ...]"
    want = "tsproxy exec: error: give the command to run after --, e.g.: " \
           "tsproxy exec fgpu -- ip addr"
    for argv in (["fgpu"], ["fgpu", "--"], ["fgpu", "ping", "100.64.0.7"]):
        assert usage_error(capsys, "exec", *argv) == [usage, want], argv
    assert usage_error(capsys, "exec") == [
        usage, "tsproxy exec: error: the following arguments are required: NAME"]
    assert usage_error(capsys, "exec", "--", "ip", "addr")[0] == usage
    with pytest.raises(SystemExit) as done:
        main(["exec", "-h"])
    assert done.value.code == 0 and "CMD and its arguments follow --" in capsys.readouterr().out


def test_tailscale_as_root_runs_the_cli_on_the_socket_inside_the_namespace(world: Path) -> None:
    cli = [str(world / "tailscale"), f"--socket={world}/run/fgpu/tailscaled.sock"]
    inside = ["ip", "netns", "exec", "ts-fgpu"]
    assert becomes("tailscale", "fgpu", "status", "--json") == [*inside, *cli, "status", "--json"]
    assert becomes("tailscale", "fgpu", "ping", "-c", "1", "100.64.0.7") == [
        *inside, *cli, "ping", "-c", "1", "100.64.0.7"]
    assert becomes("tailscale", "fgpu", "netcheck") == [*inside, *cli, "netcheck"]
    # Flags after NAME are tailscale's, not tsproxy's.
    assert becomes("tailscale", "fgpu", "-h") == [*inside, *cli, "-h"]
    assert becomes("tailscale", "fgpu") == [*inside, *cli]


def test_tailscale_as_another_user_asks_over_the_socket_from_the_host(
        world: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    cli = [str(world / "tailscale"), f"--socket={world}/run/fgpu/tailscaled.sock"]
    assert becomes("tailscale", "fgpu", "status") == [*cli, "status"]
    # netcheck would probe the host's network and report it as the instance's.
    assert refusal(capsys, "tailscale", "fgpu", "--socket=x", "netcheck", "--verbose") == (
        1, "tsproxy: tsproxy tailscale fgpu netcheck must run as root: it probes the network "
           "from inside the instance's namespace\n")


def test_exec_needs_root(world: Path, monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert refusal(capsys, "exec", "fgpu", "--", "ip", "addr") == (
        1, "tsproxy: tsproxy exec must run as root: only root may enter an instance's "
           "namespace\n")


def test_unknown_names_get_the_line_every_command_gives(world: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    others = refusal(capsys, "logout", "nope")
    assert others == (1, f"tsproxy: no instance 'nope': {world}/conf/nope.conf does not exist\n")
    assert refusal(capsys, "exec", "nope", "--", "ip", "addr") == others
    assert refusal(capsys, "tailscale", "nope", "status") == others
    assert refusal(capsys, "exec", "../x", "--", "id")[1].startswith(
        'tsproxy: instance name "../x" must be')


def test_a_stopped_instance_is_named_with_its_start_command(
        world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (world / "netns/ts-fgpu").unlink()
    assert refusal(capsys, "exec", "fgpu", "--", "ip", "addr") == (
        1, f"tsproxy: fgpu: the instance is not running ({world}/netns/ts-fgpu is missing); "
           "start it with: systemctl start tsproxy@fgpu\n")
    (world / "run/fgpu/tailscaled.sock").unlink()
    stopped = (1, f"tsproxy: fgpu: tailscaled is not running ({world}/run/fgpu/tailscaled.sock "
                  "is missing); start it with: systemctl start tsproxy@fgpu\n")
    assert refusal(capsys, "tailscale", "fgpu", "status") == stopped
    assert refusal(capsys, "logout", "fgpu") == stopped  # the words login and logout use


def test_a_missing_program_is_one_line(world: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    def missing(file: str, argv: list[str]) -> None:
        raise FileNotFoundError(2, "No such file or directory", file)
    monkeypatch.setattr(os, "execvp", missing)
    assert refusal(capsys, "exec", "fgpu", "--", "ip", "addr") == (
        1, "tsproxy: ip not found: install the iproute2 package\n")
    (world / "tailscale").unlink()
    assert refusal(capsys, "tailscale", "fgpu", "status") == (
        1, f"tsproxy: {world}/tailscale not found: install the tailscale package\n")
