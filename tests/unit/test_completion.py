"""The bash completion (completion/tsproxy): its commands and options are the parsers' own,
and bash, with Debian's bash-completion loaded, completes commands, options, option values
and instance names from the conf directory."""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
from pathlib import Path

import pytest

from tsproxy import snippets
from tsproxy.cli import COMMANDS

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "completion/tsproxy"
# A build dependency (dh-sequence-bash-completion), so present wherever the package builds.
BASH_COMPLETION = Path("/usr/share/bash-completion/bash_completion")


def completion_options() -> dict[str, set[str]]:
    """command -> the options the script offers for it."""
    text = SCRIPT.read_text()
    found: dict[str, set[str]] = {}
    for names, options in re.findall(r'^\s+([a-z][a-z |]*)\) options="([^"]*)"', text,
                                     re.MULTILINE):
        for name in names.split("|"):
            found[name.strip()] = set(options.split())
    return found


def parser_options(command: str) -> set[str]:
    parser = argparse.ArgumentParser()
    importlib.import_module(f"tsproxy.cli.{command}").register(parser)
    return {option for action in parser._actions for option in action.option_strings} \
        - {"-h", "--help"}


def test_commands_and_options_are_the_parsers() -> None:
    commands = re.search(r'local commands="([^"]*)"', SCRIPT.read_text())
    assert commands and set(commands[1].split()) == set(COMMANDS)
    offered = completion_options()
    assert set(offered) == set(COMMANDS)
    for command in COMMANDS:
        assert offered[command] == parser_options(command), command
    forms = re.search(r'compgen -W "([^"]*)" -- "\$cur"\)\)\n\s+return\n\s+;;\n\s+--timeout',
                      SCRIPT.read_text())
    assert forms and forms[1].split() == list(snippets.FORMS)


def complete(line: str, conf_dir: Path, bin_dir: Path | None = None) -> list[str]:
    """What bash offers for `line` (the cursor at its end), with bin_dir first in PATH."""
    script = f"""
source {BASH_COMPLETION}
source {SCRIPT}
COMP_LINE={line!r}
COMP_POINT=${{#COMP_LINE}}
read -ra COMP_WORDS <<< "$COMP_LINE"
[[ $COMP_LINE == *' ' ]] && COMP_WORDS+=('')
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
_tsproxy tsproxy "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    done = subprocess.run(["bash", "--norc", "-c", script], capture_output=True, text=True,
                          env={"TSPROXY_CONF_DIR": str(conf_dir),
                               "PATH": f"{bin_dir or '/nonexistent'}:/usr/bin:/bin"},
                          cwd=conf_dir, timeout=30)
    assert done.returncode == 0, done.stderr
    return sorted(line for line in done.stdout.splitlines() if line)


def test_bash_completes(tmp_path: Path) -> None:
    for name in ("fgpu", "work", "lab"):
        (tmp_path / f"{name}.conf").write_text("listen = 127.0.0.1:1080\n")
    assert complete("tsproxy st", tmp_path) == ["status"]
    assert complete("tsproxy lo", tmp_path) == ["login", "logout"]
    assert complete("tsproxy status ", tmp_path) == ["fgpu", "lab", "work"]
    assert complete("tsproxy login w", tmp_path) == ["work"]
    assert complete("tsproxy status --", tmp_path) == ["--help", "--json"]
    assert complete("tsproxy login --a", tmp_path) == ["--authkey-file"]
    assert complete("tsproxy client --for m", tmp_path) == ["macos"]
    assert complete("tsproxy check f", tmp_path) == ["fgpu.conf"]
    assert complete("tsproxy list ", tmp_path) == []
    assert complete("tsproxy --v", tmp_path) == ["--version"]
    assert complete("tsproxy migrate --s", tmp_path) == ["--state-from", "--stop"]
    assert complete("tsproxy migrate f", tmp_path) == ["fgpu"]


def test_bash_completes_what_follows_the_name(tmp_path: Path) -> None:
    (tmp_path / "fgpu.conf").write_text("listen = 127.0.0.1:1080\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # tailscale completes its own words; the stand-in says which words it was given.
    tailscale = bin_dir / "tailscale"
    tailscale.write_text("#!/bin/sh\nprintf '%s\\n' \"$@\" >\"$0.args\"\n"
                         "printf 'status\\tShow state\\nset\\tChange preferences\\n:4\\n'\n")
    tailscale.chmod(0o755)
    (bin_dir / "tsproxy-test-cmd").write_bytes(tailscale.read_bytes())
    (bin_dir / "tsproxy-test-cmd").chmod(0o755)

    assert complete("tsproxy tailscale f", tmp_path, bin_dir) == ["fgpu"]
    assert complete("tsproxy tailscale fgpu s", tmp_path, bin_dir) == ["set", "status"]
    assert (bin_dir / "tailscale.args").read_text().split() == [
        "completion", "__complete", "--", "s"]
    complete("tsproxy tailscale fgpu ping --c", tmp_path, bin_dir)
    assert (bin_dir / "tailscale.args").read_text().split() == [
        "completion", "__complete", "--", "ping", "--c"]

    assert complete("tsproxy exec f", tmp_path, bin_dir) == ["fgpu"]
    assert complete("tsproxy exec fgpu ", tmp_path, bin_dir) == ["--"]
    assert complete("tsproxy exec fgpu -- tsproxy-test-c", tmp_path, bin_dir) == [
        "tsproxy-test-cmd"]
    assert complete("tsproxy exec fgpu ping ", tmp_path, bin_dir) == []
