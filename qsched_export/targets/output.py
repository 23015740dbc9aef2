"""Writing a build output folder atomically, and copying an artifact's runtime files into it."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from qsched_export.errors import QSchedError
from runtimes.manifest import GraphSpec, Manifest, write_manifest


def refuse_existing(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not overwrite:
        raise QSchedError(f"output folder {out_dir} already exists", "pass --overwrite or another --out")


@contextlib.contextmanager
def atomic_dir(out_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp folder beside `out_dir`; on success it replaces `out_dir`, on any error it is
    removed, so an interrupted build leaves nothing half-written (and the old output intact)."""
    out_dir = Path(out_dir)
    refuse_existing(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes it private; a built artifact is meant to be copied and shared
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            out_dir.rename(old / out_dir.name)
            tmp.rename(out_dir)
            shutil.rmtree(old)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def copy_runtime_files(src: Path, dst: Path, manifest: Manifest) -> None:
    """Copy what every built artifact carries besides its graphs: tokenizer files and golden data."""
    for rel in manifest.support_files:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, dst / rel)


def finish(dst: Path, manifest: Manifest, files: dict[str, str], tools: dict[str, str] | None = None) -> Manifest:
    """Point each graph role at its built file, record tools, hash everything and write the manifest."""
    graphs = {role: GraphSpec(files[role], spec.inputs, spec.outputs) for role, spec in manifest.graphs.items()}
    return write_manifest(dst, replace(manifest, graphs=graphs, tools={**manifest.tools, **(tools or {})}, files={}))
