"""The packages depend on each other one way (qsched_export/api.py's docstring):

    runtimes/  <-  qsched_export core (sampler, quant, backbones, export, targets ...)  <-  calibration/  <-  qsched_export.api, qsched_export.cli

Read from the source's import statements (module level and inside functions), so a lazy import
cannot hide a door opened the wrong way.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOP_LAYER = ("qsched_export.api", "qsched_export.cli")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _modules(root: Path, package: str) -> dict[str, set[str]]:
    return {".".join(p.relative_to(root).with_suffix("").parts): _imports(p) for p in (root / package).rglob("*.py")}


def _violations(package: str, forbidden: tuple[str, ...], exempt: tuple[str, ...] = (), root: Path = REPO) -> list[str]:
    def hit(name: str) -> bool:
        return any(name == f or name.startswith(f + ".") for f in forbidden)

    return sorted(f"{module} imports {name}" for module, names in _modules(root, package).items()
                  if not module.startswith(exempt) for name in names if hit(name))


def test_runtimes_import_neither_side():
    assert _violations("runtimes", ("qsched_export", "calibration", "torch", "diffusers", "transformers")) == []


def test_the_core_does_not_reach_calibration():
    assert _violations("qsched_export", ("calibration",), exempt=TOP_LAYER) == []


def test_calibration_does_not_reach_the_top_layer():
    assert _violations("calibration", TOP_LAYER) == []


def test_the_check_sees_a_violation(tmp_path):
    """The scan itself works: a lazy import of calibration in a core module is reported."""
    (tmp_path / "qsched_export" / "cli").mkdir(parents=True)
    (tmp_path / "qsched_export" / "bad.py").write_text("def f():\n    from calibration.api import calibrate\n")
    (tmp_path / "qsched_export" / "cli" / "ok.py").write_text("import calibration\n")
    assert _violations("qsched_export", ("calibration",), exempt=TOP_LAYER, root=tmp_path) == ["qsched_export.bad imports calibration.api"]
