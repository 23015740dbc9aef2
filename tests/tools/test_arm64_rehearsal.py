"""tools/arm64_rehearsal.sh: shellcheck-clean, and its argument errors are one line with exit 1.

The rehearsal itself needs root, debootstrap, qemu and the network (minutes to tens of
minutes); its log from a real run is docs/arm64_rehearsal.log. These tests stop before any of
that: arguments are checked first.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "arm64_rehearsal.sh"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_script_is_shellcheck_clean():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not on PATH (apt-get install shellcheck): tools/arm64_rehearsal.sh was not linted")
    result = subprocess.run([shellcheck, "--severity=style", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_help_describes_the_rehearsal():
    result = run("--help")
    assert result.returncode == 0
    assert "Usage: tools/arm64_rehearsal.sh" in result.stdout and "NOT benchmarks" in result.stdout
    assert "set -euo" not in result.stdout


@pytest.mark.parametrize(("args", "message"), [
    (("--bits", "5"), "--bits must be 4, 8, 16 or 32, got 5"),
    (("--frobnicate",), "unknown option --frobnicate"),
    (("--bundle",), "--bundle needs a folder"),
    (("--python", "ruby"), "--python must name an interpreter like python3 or python3.11, got ruby"),
    (("a", "b"), "one ROOTFS folder only"),
])
def test_bad_arguments_are_one_line_errors(args, message):
    result = run(*args)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("arm64_rehearsal: error: ") and message in lines[0], result.stderr
