"""Kill tests: SIGINT, SIGTERM and SIGKILL while `build` and `export` write over a previous
artifact. The command is held at a known point of its write (a test-only pause after the first
graph is written into its temp folder), then signalled.

After SIGINT or SIGTERM the command ends with exit 130 and one line saying it was interrupted,
the previous artifact is as it was and no temp folder is left. After SIGKILL nothing can clean up:
the previous artifact is still as it was, and the next writing command in that folder removes
what the killed one left.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from damage import snapshot
from cli_runner import STEPS, copy_into, wait_for

SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}
# command -> (argv writing over {work}/kept, the previous artifact it starts from, where it pauses)
COMMANDS = {
    "build": (("build", "--from", "{exported}", "--target", "onnxruntime", "--bits", "32", "--out", "{work}/kept", "--overwrite"),
              "good", "qsched_export.targets.onnxruntime:optimize_graph"),
    "export": (("export", "--model", "{model}", "--bits", "32", "--steps", str(STEPS), "--out", "{work}/kept", "--overwrite"),
               "exported", "qsched_export.export.onnx_io:save_model"),
}


def _hidden(work: Path) -> list[str]:
    return sorted(p.name for p in work.iterdir() if p.name.startswith("."))


def _temp_with_a_file(work: Path) -> Path | None:
    return next((p for p in work.iterdir() if p.name.startswith(".") and p.is_dir() and any(p.rglob("*.onnx"))), None)


def _params():
    for command in COMMANDS:
        for name in SIGNALS:
            yield pytest.param(command, name, id=f"{command}-{name}")


@pytest.mark.parametrize("command,signal_name", _params())
def test_killed_while_writing(command, signal_name, cli, shared, tmp_path):
    argv, previous, pause = COMMANDS[command]
    work = tmp_path / "work"
    work.mkdir()
    kept = copy_into(shared / previous, work / "kept")
    before = snapshot(kept)
    places = {"work": work, "exported": shared / "exported", "model": shared / "model"}
    running = cli.start([a.format(**places) for a in argv], cwd=work, pause=pause)
    wait_for(lambda: _temp_with_a_file(work), f"{command}'s temp folder to hold a graph", running=running)
    running.signal(SIGNALS[signal_name])
    result = running.wait()

    if signal_name == "SIGKILL":
        assert result.exit == -signal.SIGKILL
    else:
        assert result.exit == 130, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert lines[-1].startswith(f"error: interrupted by {signal_name}; ") and "Traceback" not in result.stderr, result.stderr
        assert _hidden(work) == [], "an interrupt left temp folders"
    assert snapshot(kept) == before, "the previous artifact changed"

    # The next writing command in the same folder removes what a killed run left.
    after = cli("build", "--from", shared / "good", "--target", "onnxruntime", "--bits", "32", "--out", work / "next", cwd=work)
    assert after.exit == 0, after.stderr
    assert _hidden(work) == [] and sorted(p.name for p in work.iterdir()) == ["kept", "next"]


def test_killed_right_after_built_leaves_no_artifact_without_parity(cli, shared, tmp_path):
    """Killed once the target's build returned, before the parity check: the output in place is the
    previous artifact, or one that carries its parity.json, never a build without it."""
    work = tmp_path / "work"
    work.mkdir()
    kept = copy_into(shared / "good", work / "kept")  # copied with its files' times: a new manifest is newer
    before = snapshot(kept)
    start_ns = max(p.stat().st_mtime_ns for p in kept.rglob("*"))
    argv = ["build", "--from", shared / "exported", "--target", "onnxruntime", "--bits", "32", "--out", kept, "--overwrite"]
    running = cli.start([str(a) for a in argv], cwd=work, pause="qsched_export.targets.onnxruntime:build")
    wait_for(lambda: any(p.stat().st_mtime_ns > start_ns for p in work.rglob("manifest.json")), "the built artifact's manifest",
             running=running)
    running.signal(signal.SIGTERM)
    assert running.wait().exit == 130
    assert snapshot(kept) == before or (kept / "parity.json").is_file(), "an artifact without parity.json is in place"
