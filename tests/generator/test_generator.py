"""Golden tests: cases/NN-name/ is a fake root (etc/tsproxy.d/*.conf, maybe proc/cmdline);
expected.dump lists the generator's exit status, log and every output path with its
content or link target. `pytest --update-goldens` rewrites the dumps."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

HERE = Path(__file__).parent
REPO = HERE.parent.parent
LAUNCHER = REPO / "lib/systemd/system-generators/tsproxy-generator"
CASES = sorted(p for p in (HERE / "cases").iterdir() if p.is_dir())


def run_generator(root: Path, out: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "SYSTEMD_LOG_TARGET": "console",
           "TSPROXY_GENERATOR_ROOT": str(root)}
    # As systemd calls it: normal, early and late output directories.
    dirs = [out / "normal", out / "early", out / "late"]
    for directory in dirs:
        directory.mkdir()
    return subprocess.run([sys.executable, str(LAUNCHER), *map(str, dirs)], env=env,
                          capture_output=True, text=True, timeout=30)


def dump(root: Path, out: Path, result: subprocess.CompletedProcess[str]) -> str:
    lines = [f"== exit {result.returncode}", "== log", result.stderr.rstrip("\n")]
    for path in sorted(out.rglob("*")):
        relative = path.relative_to(out)
        if path.is_symlink():
            lines.append(f"== {relative} -> {os.readlink(path)}")
        elif path.is_file():
            lines += [f"== {relative}", path.read_text().rstrip("\n")]
    # Paths inside the fake root read as they would on a real system.
    return "\n".join(lines).replace(str(root), "") + "\n"


def private_copy(case: Path, root: Path) -> Path:
    """The case's fake root with its keys and users files mode 600, as an admin makes them
    (git keeps no modes but the executable bit; the generator refuses readable ones)."""
    shutil.copytree(case, root, symlinks=True)
    for secret in [*root.rglob("*.key"), *root.rglob("*.users")]:
        secret.chmod(0o600)
    return root


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(case: Path, tmp_path: Path, update_goldens: bool) -> None:
    root = private_copy(case, tmp_path / "root")
    out = tmp_path / "out"
    out.mkdir()
    result = run_generator(root, out)
    assert "Traceback" not in result.stderr
    got = dump(root, out, result)
    golden = case / "expected.dump"
    if update_goldens:
        golden.write_text(got)
    assert got == golden.read_text()


def test_writes_only_into_its_normal_dir(tmp_path: Path) -> None:
    case = HERE / "cases" / "02-several"
    before = sorted(case.rglob("*"))
    run_generator(case, tmp_path)
    assert sorted(case.rglob("*")) == before
    assert not any((tmp_path / "early").iterdir())
    assert not any((tmp_path / "late").iterdir())


def test_usage_error_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(LAUNCHER)], capture_output=True, text=True,
                            env={"PYTHONPATH": str(REPO), "SYSTEMD_LOG_TARGET": "console"})
    assert (result.returncode, result.stderr) == (
        2, "tsproxy-generator: usage: tsproxy-generator NORMAL_DIR [EARLY_DIR LATE_DIR]\n")


def test_an_unreadable_conf_directory_is_one_line_and_no_units(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/tsproxy.d").write_text("")  # listdir() fails for root too
    out = tmp_path / "out"
    out.mkdir()
    result = run_generator(root, out)
    assert result.returncode == 1
    assert result.stderr.replace(str(root), "") == \
        "tsproxy-generator: /etc/tsproxy.d: cannot read the directory: Not a directory " \
        "(no tailnet started)\n"
    assert not any(path.is_file() for path in out.rglob("*"))
