"""The console script's own handling, in-process: usage errors as one line with exit 2, and a bug
keeps its own traceback (the entry point never masks it)."""

from __future__ import annotations

import sys

import pytest

import qsched_export.cli as cli


def _main(monkeypatch, *argv: str) -> int:
    monkeypatch.setattr(sys, "argv", ["qsched-export", *argv])
    monkeypatch.setattr(cli, "start_cli", lambda: None)  # no process-wide signal handler or env in the test process
    with pytest.raises(SystemExit) as info:
        cli.main()
    return info.value.code


def test_usage_errors_are_one_line_with_exit_2(monkeypatch, capsys):
    assert _main(monkeypatch, "run", "--artifact", "x", "--prompt", "hi", "--seed", "abc") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: Invalid value for '--seed'") and err[0].endswith("(see qsched-export run --help)")
    assert _main(monkeypatch, "bogus") == 2
    assert capsys.readouterr().err.strip() == "error: No such command 'bogus'. (see qsched-export --help)"


def test_a_bug_keeps_its_own_traceback(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug, not a user error")

    monkeypatch.setattr(cli, "app", broken)
    monkeypatch.setattr(sys, "argv", ["qsched-export", "info"])
    monkeypatch.setattr(cli, "start_cli", lambda: None)
    with pytest.raises(RuntimeError, match="a bug, not a user error"):
        cli.main()
