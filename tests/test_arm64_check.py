"""scripts/arm64-check.sh parses, is shellcheck-clean and refuses bad arguments before touching anything.

The check itself (debootstrap, qemu, 10+ minutes) runs by hand: README "arm64 under emulation"."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "arm64-check.sh"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60, check=False)


def test_script_parses_and_is_executable() -> None:
    assert SCRIPT.stat().st_mode & 0o100
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=30)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_script_is_shellcheck_clean() -> None:
    result = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_help_describes_the_steps() -> None:
    result = run("--help")
    assert result.returncode == 0
    for word in ("debootstrap", "qemu", "install.sh", "check-config", "infer", "--frames", "not a benchmark"):
        assert word.lower() in result.stdout.lower()


@pytest.mark.parametrize("args", [["--frames", "0"], ["--frames", "x"], ["--frames"], ["--bogus"]])
def test_bad_arguments_are_refused(args: list[str]) -> None:
    result = run(*args)
    assert result.returncode != 0
    assert "error" in result.stderr
