"""`tsproxy client`: golden output for every form (`--update-goldens` rewrites them), the
snippets fed to the programs that read them (ssh -G, bash, pacparser), and bad input."""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_pac import evaluate

pytestmark = pytest.mark.unit

HERE = Path(__file__).parent / "client"
CONFS = HERE / "confs"  # fgpu (100.121.76.21), lab (0.0.0.0, DNS on 5353), v6 (no DNS)
REPO = HERE.parents[2]
GATEWAY = "100.121.76.21"
FORMS = ["macos", "linux", "ssh", "firefox", "env", "pac", "forwards"]
FGPU_PROXY = "nc -X 5 -x 100.121.76.21:11080 %h %p"
LAB_PROXY = "nc -X 5 -x 100.121.76.21:1081 %h %p"


def tsproxy(*args: str, conf_dir: Path = CONFS) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "TSPROXY_CONF_DIR": str(conf_dir)}
    return subprocess.run([sys.executable, "-m", "tsproxy", "client", *args], env=env,
                          capture_output=True, text=True, timeout=30)


def snippet(*args: str) -> str:
    done = tsproxy(*args)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    return done.stdout


@pytest.mark.parametrize("form", [*FORMS, None], ids=[*FORMS, "all"])
def test_golden(form: str | None, update_goldens: bool) -> None:
    got = snippet("--gateway", GATEWAY, *(["--for", form] if form else []))
    golden = HERE / "expected" / f"{form or 'all'}.txt"
    if update_goldens:
        golden.write_text(got)
    assert got == golden.read_text()


def test_names_pick_instances_in_the_order_given() -> None:
    ssh = snippet("--for", "ssh", "--gateway", GATEWAY, "v6", "fgpu", "v6")
    assert re.findall(r"^Host (.*)$", ssh, re.M) == ["*.v6", "*.fgpu *.corp.example"]
    # Without an instance on 0.0.0.0 among them, no --gateway is needed.
    assert "ProxyCommand nc -X 5 -x 100.121.76.21:11080 %h %p" in snippet("--for", "ssh", "fgpu")


# -- the programs that read the snippets ----------------------------------------------------

@pytest.fixture(scope="module")
def ssh_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ssh") / "config"
    path.write_text(snippet("--for", "ssh", "--gateway", GATEWAY))
    return path


@pytest.mark.parametrize(("host", "proxy"), [
    ("x.fgpu", FGPU_PROXY), ("Web.fgpu", FGPU_PROXY), ("10.100.10.141.fgpu", FGPU_PROXY),
    ("a.b.corp.example", FGPU_PROXY), ("gpu.lab.internal", LAB_PROXY),
    ("box.v6", "nc -X 5 -x [fd7a:115c:a1e0::5]:1082 %h %p"),
    ("xfgpu", None), ("fgpu.evil.com", None), ("x.fgpu.evil.com", None), ("fgpu", None),
    ("corp.example.org", None), ("lab", None), ("example.com", None), ("100.64.0.7", None),
])
def test_ssh_reads_the_proxy_command(ssh_config: Path, host: str, proxy: str | None) -> None:
    done = subprocess.run(["ssh", "-G", "-F", str(ssh_config), host], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    found = re.findall(r"^proxycommand (.*)$", done.stdout, re.M)
    assert found == ([proxy] if proxy else [])


def run_as_root_elsewhere(script: str, root: Path) -> subprocess.CompletedProcess[str]:
    """A snippet meant for `sudo` on a client, run by bash with its /etc moved under `root`
    and sudo and systemctl recorded instead of run."""
    moved = script.replace(" /etc/", f" {root}/etc/")
    prelude = ('sudo() { "$@"; }\n'
               f'systemctl() {{ echo "systemctl $*" >> {root}/calls; }}\n')
    return subprocess.run(["bash", "-euo", "pipefail", "-c", prelude + moved],
                          capture_output=True, text=True, timeout=30)


def test_the_macos_snippet_writes_resolver_files(tmp_path: Path) -> None:
    done = run_as_root_elsewhere(snippet("--for", "macos", "--gateway", GATEWAY), tmp_path)
    assert done.returncode == 0, done.stderr
    resolver = tmp_path / "etc/resolver"
    assert {p.name: p.read_text() for p in resolver.iterdir()} == {
        "fgpu": "nameserver 100.121.76.21\n",
        "corp.example": "nameserver 100.121.76.21\n",
        "lab.internal": "nameserver 100.121.76.21\nport 5353\n",
    }  # v6 has dns_listen = no: no file


def test_the_linux_snippet_writes_resolved_drop_ins(tmp_path: Path) -> None:
    done = run_as_root_elsewhere(snippet("--for", "linux", "--gateway", GATEWAY), tmp_path)
    assert done.returncode == 0, done.stderr
    drop_ins = tmp_path / "etc/systemd/resolved.conf.d"
    found = {}
    for path in sorted(drop_ins.iterdir()):
        parser = configparser.ConfigParser()
        parser.read_string(path.read_text())
        found[path.name] = dict(parser["Resolve"])
    assert found == {
        "tsproxy-fgpu.conf": {"dns": "100.121.76.21", "domains": "~fgpu ~corp.example"},
        "tsproxy-lab.conf": {"dns": "100.121.76.21:5353", "domains": "~lab.internal"},
    }
    assert (tmp_path / "calls").read_text() == "systemctl restart systemd-resolved\n"


def test_the_env_snippet_defines_one_function_per_instance() -> None:
    text = snippet("--for", "env", "--gateway", GATEWAY)
    probe = text + 'via_lab sh -c \'echo "$http_proxy $ALL_PROXY $no_proxy"\'\n' \
                   'echo "outside: ${http_proxy-unset}"\n'
    done = subprocess.run(["bash", "-euc", probe], capture_output=True, text=True, timeout=30,
                          env={"PATH": os.environ["PATH"]})
    assert done.returncode == 0, done.stderr
    assert done.stdout == ("http://100.121.76.21:1081 socks5h://100.121.76.21:1081 "
                           "localhost,127.0.0.1,::1\noutside: unset\n")


def test_the_printed_pac_in_a_pac_engine() -> None:
    text = snippet("--for", "pac", "--gateway", GATEWAY)
    assert evaluate(text, ["http://web.fgpu/", "http://x.lab.internal/", "http://box.v6/",
                           "http://v6.example/"]) == {
        "http://web.fgpu/": f"SOCKS5 {GATEWAY}:11080; SOCKS {GATEWAY}:11080; "
                            f"PROXY {GATEWAY}:11080",
        "http://x.lab.internal/": f"SOCKS5 {GATEWAY}:1081; SOCKS {GATEWAY}:1081; "
                                  f"PROXY {GATEWAY}:1081",
        "http://box.v6/": "SOCKS5 [fd7a:115c:a1e0::5]:1082; SOCKS [fd7a:115c:a1e0::5]:1082; "
                          "PROXY [fd7a:115c:a1e0::5]:1082",
        "http://v6.example/": "DIRECT"}


# -- bad input: one line, exit 1, no traceback -----------------------------------------------

@pytest.mark.parametrize(("args", "message"), [
    ((), "tsproxy: lab: listen 0.0.0.0:1081 is every address of this host: say which one "
         "clients reach it at with --gateway IP\n"),
    (("lab",), "tsproxy: lab: listen 0.0.0.0:1081 is every address of this host: say which "
               "one clients reach it at with --gateway IP\n"),
    (("--gateway", "fd7a:115c:a1e0::1", "lab"),
     "tsproxy: lab: listen 0.0.0.0:1081 takes IPv4 only, --gateway fd7a:115c:a1e0::1 is IPv6\n"),
    (("--gateway", "gateway.example"),
     "tsproxy: --gateway: 'gateway.example' is not an IP address\n"),
    (("nope",), f"tsproxy: no instance 'nope': {CONFS}/nope.conf does not exist\n"),
])
def test_bad_input(args: tuple[str, ...], message: str) -> None:
    done = tsproxy(*args)
    assert (done.returncode, done.stdout, done.stderr) == (1, "", message)


def test_a_bad_conf(tmp_path: Path) -> None:
    (tmp_path / "fgpu.conf").write_text("listen = 100.121.76.21:11080\n")
    (tmp_path / "broken.conf").write_text("listen = 100.121.76.21:70000\n")
    named = tsproxy("broken", conf_dir=tmp_path)
    assert (named.returncode, named.stdout) == (1, "")
    assert named.stderr == (f'tsproxy: {tmp_path}/broken.conf: listen: port "70000" is not '
                            "in 1..65535\n")
    # By default the good ones are printed, and the bad one is named on stderr.
    every = tsproxy("--for", "ssh", conf_dir=tmp_path)
    assert every.returncode == 0 and "Host *.fgpu\n" in every.stdout
    assert every.stderr == (f'tsproxy: skipped: {tmp_path}/broken.conf: listen: port "70000" '
                            "is not in 1..65535\n")


def test_no_confs(tmp_path: Path) -> None:
    done = tsproxy(conf_dir=tmp_path)
    assert (done.returncode, done.stderr) == (
        1, f"tsproxy: no good confs in {tmp_path} (see tsproxy check)\n")


def test_an_unknown_form_is_a_usage_error() -> None:
    done = tsproxy("--for", "windows")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "invalid choice: 'windows'" in done.stderr
