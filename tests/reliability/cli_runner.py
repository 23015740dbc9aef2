"""Running the CLI of a checkout for the reliability room (through `cli_server.py`), and waiting
on it. The fixtures that build on this are in conftest.py."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
THIS_CHECKOUT = TESTS.parent
STEPS = 2  # the tiny model's exports unroll 2 steps
TIMEOUT_S = 180  # per command; far above the slowest case (a tiny export), so only a hang reaches it


@dataclass(frozen=True)
class Result:
    exit: int | None  # None: killed at TIMEOUT_S
    stdout: str
    stderr: str


class Cli:
    """`python -m qsched_export ARGV` in the checkout under test, through `cli_server.py`."""

    def __init__(self, checkout: Path, root: Path):
        self.checkout = checkout
        self.root = root
        # The test's settings (QSCHED_MATRIX_*) and terminal width stay out of the commands' environment.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("QSCHED_MATRIX_") and k != "COLUMNS"}
        self.env["PYTHONPATH"] = str(checkout)
        self._log = open(root / "cli_server.log", "w")
        self._server = subprocess.Popen([sys.executable, str(HERE / "cli_server.py")], cwd=root, env=self.env, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log)
        if self._read(TIMEOUT_S) != {"ready": True}:
            raise RuntimeError(f"the CLI server did not start: see {root / 'cli_server.log'}")
        self._count = 0

    def _read(self, timeout: float) -> dict | None:
        ready, _, _ = select.select([self._server.stdout], [], [], timeout)
        if not ready:
            return None
        line = self._server.stdout.readline()
        return json.loads(line) if line else None

    def start(self, argv: list[str] | None = None, *, cwd: Path, call: str | None = None, args: list | None = None,
              pause: str | None = None, forbid: str | None = None) -> "Running":
        self._count += 1
        out, err = self.root / f"cmd{self._count}.out", self.root / f"cmd{self._count}.err"
        request = {"argv": [str(a) for a in argv or []], "cwd": str(cwd), "env": self.env, "stdout": str(out), "stderr": str(err),
                   "call": call, "args": args or [], "pause": pause, "forbid": forbid}
        self._server.stdin.write(json.dumps(request) + "\n")
        self._server.stdin.flush()
        answer = self._read(TIMEOUT_S)
        if not answer or "pid" not in answer:
            raise RuntimeError(f"the CLI server did not start the command: see {self.root / 'cli_server.log'}")
        return Running(self, answer["pid"], out, err)

    def __call__(self, *argv, cwd: Path, forbid: str | None = None) -> Result:
        return self.start(list(argv), cwd=cwd, forbid=forbid).wait()

    def call(self, target: str, *args) -> None:
        """Run a setup function (module:function, from tests/) in a child of the server."""
        result = self.start(call=target, args=[str(a) for a in args], cwd=self.root).wait()
        if result.exit != 0:
            raise RuntimeError(f"{target} failed:\n{result.stderr}")

    def close(self) -> None:
        self._server.stdin.close()
        self._server.wait(timeout=30)
        self._log.close()


@dataclass
class Running:
    cli: Cli
    pid: int
    out: Path
    err: Path

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float = TIMEOUT_S) -> Result:
        answer = self.cli._read(timeout)
        if answer is None:
            os.kill(self.pid, signal.SIGKILL)
            self.cli._read(TIMEOUT_S)
        return Result(None if answer is None else answer["exit"], self.out.read_text(errors="replace"), self.err.read_text(errors="replace"))


def wait_for(condition, what: str, timeout: float = 120.0, running: Running | None = None):
    """Poll `condition()` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.02)
    detail = f"\nstderr: {running.err.read_text()}" if running is not None else ""
    pytest.fail(f"gave up waiting for {what} after {timeout:.0f} s{detail}")




def copy_into(src: Path, dst: Path) -> Path:
    return Path(shutil.copytree(src, dst, symlinks=True))
