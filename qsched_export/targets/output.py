"""What every target does to its output folder: copy the artifact's runtime files in, and write
its manifest. The folder itself is written by `runtimes.files.staged_dir`, the one atomic folder
writer (checked first with `check_output_folder`)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from runtimes.manifest import GraphSpec, Manifest, artifact_path, write_manifest

# Called with the staging folder once a target's output is complete (manifest written); raising
# keeps the previous output. The build API passes its parity check here.
Verify = Callable[[Path], None]


def copy_runtime_files(src: Path, dst: Path, manifest: Manifest) -> None:
    """Copy what every built artifact carries besides its graphs: tokenizer files and golden data."""
    for rel in manifest.support_files:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(artifact_path(src, rel), dst / rel)


def finish(dst: Path, manifest: Manifest, files: dict[str, str], tools: dict[str, str] | None = None, verify: Verify | None = None) -> Manifest:
    """Point each graph role at its built file, record tools, hash everything and write the
    manifest; then `verify(dst)`, inside the staging folder, before it replaces the output."""
    graphs = {role: GraphSpec(files[role], spec.inputs, spec.outputs) for role, spec in manifest.graphs.items()}
    written = write_manifest(dst, replace(manifest, graphs=graphs, tools={**manifest.tools, **(tools or {})}, files={}))
    if verify is not None:
        verify(dst)
    return written
