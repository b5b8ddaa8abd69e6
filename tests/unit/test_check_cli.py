"""`tsproxy check`: a listen address this host does not have is a warning, not an error
(the sockets bind anyway, FreeBind); the exit status stays the errors' alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from tsproxy.cli import main

pytestmark = pytest.mark.unit


def check(tmp_path: Path, capsys: pytest.CaptureFixture[str],
          monkeypatch: pytest.MonkeyPatch, confs: dict[str, str]) -> tuple[int, str, str]:
    for name, text in confs.items():
        (tmp_path / name).write_text(text)
    monkeypatch.setenv("TSPROXY_CONF_DIR", str(tmp_path))
    code = main(["check"])
    out, err = capsys.readouterr()
    return code, out.replace(str(tmp_path), "TMP"), err.replace(str(tmp_path), "TMP")


def test_an_address_the_host_lacks_is_one_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # 192.0.2.0/24 (TEST-NET-1) is on no interface of any host running these tests.
    code, out, err = check(tmp_path, capsys, monkeypatch, {
        "fgpu.conf": "listen = 192.0.2.21:11080\n",
        "local.conf": "listen = 127.0.0.1:11081\ndns_listen = 127.0.0.1:5353\n",
        "any.conf": "listen = 0.0.0.0:11082\ndns_listen = no\n"})
    assert code == 0
    assert out.count(": ok: ") == 3
    assert err == ("TMP/fgpu.conf: listen: 192.0.2.21 is not an address of this host yet "
                   "(tsproxy starts anyway, FreeBind); is the primary tailscale up? "
                   "see tailscale ip -4\n")


def test_dns_listen_elsewhere_is_checked_too(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = check(tmp_path, capsys, monkeypatch, {
        "fgpu.conf": "listen = 127.0.0.1:11080\ndns_listen = [2001:db8::53]:53\n"})
    assert code == 0
    assert err == ("TMP/fgpu.conf: dns_listen: 2001:db8::53 is not an address of this host "
                   "yet (tsproxy starts anyway, FreeBind); is the primary tailscale up? "
                   "see tailscale ip -6\n")


def test_errors_still_decide_the_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = check(tmp_path, capsys, monkeypatch, {
        "fgpu.conf": "listen = 192.0.2.21:11080\n", "bad.conf": "listen = 127.0.0.1:1\nport = 1\n"})
    assert code == 1
    assert err.splitlines() == [
        "TMP/fgpu.conf: listen: 192.0.2.21 is not an address of this host yet (tsproxy starts "
        "anyway, FreeBind); is the primary tailscale up? see tailscale ip -4",
        "TMP/bad.conf: port: unknown key (see tsproxy.d(5))"]


def test_a_conf_directory_that_cannot_be_read_is_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # As root, a mode 0700 directory reads anyway: a file where the directory belongs fails
    # the same listdir() for every user.
    (tmp_path / "tsproxy.d").write_text("")
    monkeypatch.setenv("TSPROXY_CONF_DIR", str(tmp_path / "tsproxy.d"))
    for command in ("check", "list", "status"):
        assert main([command]) == 1
        _, err = capsys.readouterr()
        assert err == f"tsproxy: {tmp_path}/tsproxy.d: cannot read the directory: " \
                      "Not a directory\n", command
