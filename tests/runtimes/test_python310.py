"""The torch-free side runs on Python 3.10 (JetPack 6's), checked statically with vermin.

The files: `runtimes/`, the CLI (`qsched_export/cli/`: `build --from`, `check`, `run`, `info` are
reached through its `__init__`, which imports every command module), the build targets, and
everything those import at module level, followed through the repository. Imports inside
functions are the torch side's (export, calibration) and are not followed.

vermin runs with `-t=3.10-` (fail on anything newer), `--eval-annotations` (typer evaluates the
CLI's annotations at run time), `--no-parse-comments` (a `# novm` comment cannot hide a
construct), `--pessimistic` (a file the running Python cannot parse counts as incompatible) and
`--no-config-file`. Its exit status is the verdict; `--violations` is not used because it exits 0
when any file fails to parse. A second test feeds it 3.11-only constructs to show that the
check fails on them.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOT_PACKAGES = ("qsched_export", "runtimes", "calibration")
# The entry points of the device-side commands; the closure of their module-level imports is checked.
ROOTS = ("qsched_export/__init__.py", "qsched_export/__main__.py", "qsched_export/errors.py", "qsched_export/cli",
         "qsched_export/targets", "runtimes")
VERMIN_FLAGS = ("-t=3.10-", "--eval-annotations", "--no-parse-comments", "--pessimistic", "--no-config-file",
                "--no-tips", "-vvv", "--processes=1")


def _module_file(module: str) -> Path | None:
    path = REPO.joinpath(*module.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(tree: ast.Module, package: str) -> set[str]:
    """In-repository modules imported when the module runs (function bodies excluded)."""
    found: set[str] = set()

    def visit(nodes) -> None:
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
            visit(ast.iter_child_nodes(node))

    visit(tree.body)
    modules = set()
    for name in found:
        if name.split(".")[0] in ROOT_PACKAGES:
            parts = name.split(".")
            modules.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))  # parents' __init__ run too
    return modules


def device_side_files() -> list[Path]:
    todo = [p for root in ROOTS for p in ([REPO / root] if root.endswith(".py") else sorted((REPO / root).glob("*.py")))]
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        package = ".".join(path.relative_to(REPO).parts[:-1])  # of a module and of an __init__ alike
        for module in _imported_modules(ast.parse(path.read_text(), str(path)), package):
            file = _module_file(module)
            if file is not None and file not in seen:
                todo.append(file)
    return sorted(seen)


def run_vermin(paths: list[Path]) -> subprocess.CompletedProcess:
    try:
        import vermin  # noqa: F401
    except ImportError:
        pytest.fail("vermin is not installed: pip install -e '.[dev]' (the Python 3.10 check needs it)")
    # vermin has no `python -m vermin`; call its entry point with this interpreter.
    code = "import sys; from vermin.main import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *VERMIN_FLAGS, *map(str, paths)], capture_output=True, text=True, cwd=REPO)


def newer_than_3_10(vermin_output: str) -> str:
    """The lines of vermin's report that name a file or a construct beyond 3.10 (for messages)."""
    keep = re.compile(r"3\.(1[1-9]|[2-9][0-9])\b|\berror:|not met")
    return "\n".join(line for line in vermin_output.splitlines() if keep.search(line.strip()) and "requires !2, 3.10" not in line)


def test_device_side_files_are_the_ones_we_mean():
    files = {p.relative_to(REPO).as_posix() for p in device_side_files()}
    # The roots and what they pull in at module level (the targets import runtimes.manifest ...).
    assert {"runtimes/manifest.py", "runtimes/pipeline.py", "qsched_export/cli/build.py", "qsched_export/cli/check.py",
            "qsched_export/cli/run.py", "qsched_export/cli/info.py", "qsched_export/targets/onnxruntime.py",
            "qsched_export/errors.py", "qsched_export/__init__.py"} <= files
    # The torch side stays out: it is imported only inside the commands that need it.
    assert not any(f.startswith(("qsched_export/export/", "qsched_export/quant/", "calibration/")) for f in files), sorted(files)


def test_device_side_runs_on_python_3_10():
    files = device_side_files()
    result = run_vermin(files)
    assert result.returncode == 0, f"vermin -t=3.10- failed on the torch-free side:\n{newer_than_3_10(result.stdout)}{result.stderr}"
    assert f"Analyzing {len(files)} files" in result.stdout, result.stdout


THREE_ELEVEN_ONLY = {
    "except*": "try:\n    pass\nexcept* ValueError:\n    pass\n",
    "typing.Self": "from typing import Self\n",
    "tomllib": "import tomllib\n",
    "datetime.UTC": "import datetime\nNOW = datetime.datetime.now(datetime.UTC)\n",
    "hashlib.file_digest": "import hashlib\n\ndef digest(f):\n    return hashlib.file_digest(f, 'sha256')\n",
    "enum.StrEnum": "from enum import StrEnum\n",
    "a # novm comment": "import tomllib  # novm\n",
}


@pytest.mark.parametrize("construct", sorted(THREE_ELEVEN_ONLY))
def test_the_check_fails_on_a_python_3_11_construct(construct, tmp_path):
    ok = tmp_path / "ok.py"
    ok.write_text("from __future__ import annotations\n\ndef f(x: int | None) -> str:\n    match x:\n        case None:\n            return ''\n    return str(x)\n")
    bad = tmp_path / "bad.py"
    bad.write_text(THREE_ELEVEN_ONLY[construct])
    assert run_vermin([ok]).returncode == 0  # 3.10 syntax (match, X | None) passes ...
    result = run_vermin([ok, bad])  # ... and one 3.11 file among good ones fails the whole check
    assert result.returncode == 1, result.stdout
    assert "3.11" in result.stdout and "Target versions not met" in result.stdout, result.stdout
