"""`runtimes/`, the targets and the torch-free commands work with torch, diffusers and
transformers made unimportable (a sys.meta_path finder raises ModuleNotFoundError), as on a
Jetson with only `qsched-export[runtime]`."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = {"torch", "torchvision", "diffusers", "transformers", "open_clip", "calibration"}
    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
            return None
    sys.meta_path.insert(0, BlockTorch())
""")
REPO = Path(__file__).resolve().parents[2]


def _run(body: str, *argv: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    script = BLOCKER + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, cwd=cwd, timeout=120)


def _cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return _run("from qsched_export.cli import main\nsys.argv = ['qsched-export', *sys.argv[1:]]\nmain()", *argv, cwd=cwd)


def test_runtimes_and_targets_import_without_torch():
    result = _run("""
        import importlib, pkgutil
        import runtimes, qsched_export.targets
        for pkg in (runtimes, qsched_export.targets):
            for info in pkgutil.iter_modules(pkg.__path__):
                importlib.import_module(f"{pkg.__name__}.{info.name}")
        import qsched_export.cli
        # The data-only definitions both sides read: schemes, the sampler plan, qsched.json, output defaults.
        import runtimes.schemes, qsched_export.plan, qsched_export.qsched_file, qsched_export.outputs
        assert not any(m.split(".")[0] in BLOCKED for m in sys.modules), sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        print("ok")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_check_run_and_build_from_without_torch(hand_artifact, tmp_path):
    check = _cli("check", "--artifact", str(hand_artifact), cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert "PASSED | onnxruntime (CPUExecutionProvider)" in check.stdout
    run = _cli("run", "--artifact", str(hand_artifact), "--prompt", "a red circle", "--out", "img.png", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "img.png").stat().st_size > 0
    build = _cli("build", "--from", str(hand_artifact), "--target", "onnxruntime", "--bits", "8", "--out", "built", cwd=tmp_path)
    assert build.returncode == 0, build.stderr
    assert "PASSED | onnxruntime (CPUExecutionProvider)" in build.stdout
    assert {"manifest.json", "parity.json", "sample.png", "denoise.onnx"} <= {p.name for p in (tmp_path / "built").iterdir()}


@pytest.mark.parametrize("argv", [["generate", "--prompt", "a red circle"], ["build", "--target", "onnxruntime", "--bits", "8"]])
def test_torch_side_commands_name_the_extra(argv, tmp_path):
    result = _cli(*argv, cwd=tmp_path)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr and "pip install" in result.stderr and "torch" in lines[0]
