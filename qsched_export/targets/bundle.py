"""`bundle --target tensorrt`: a self-contained folder to copy to a Jetson Orin (or any TensorRT
machine), where engines must be built because they are tied to the GPU and TensorRT version.

It holds the ONNX graphs (already checked against TensorRT's contract for 10.3 and desktop),
the manifest, golden data, tokenizer files, `build_engine.sh` with the equivalent `trtexec`
lines and a README. On the device: `pip install "qsched-export[runtime]"`, then
`qsched-export build --from BUNDLE --target tensorrt --bits N` builds and checks without torch.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

from qsched_export.targets.tensorrt import graph_paths, require_tensorrt_form
from qsched_export.targets.tensorrt_contract import DEFAULT_PROFILES, require_contract
from runtimes.files import staged_dir
from runtimes.manifest import Manifest, load_manifest, write_manifest

BUILD_SCRIPT = "build_engine.sh"
README = "README.md"
TIMING_CACHE = "tensorrt.timing-cache"
# Orin shares its memory between CPU and GPU; TensorRT's default workspace is the whole device
# memory. 2 GiB is our cap, not an NVIDIA recommendation (none was found).
DEFAULT_WORKSPACE_MIB = 2048


# The trtexec flags below, checked against TensorRT 10.3 (JetPack 6.1/6.2), tag v10.3.0 of
# NVIDIA/TensorRT, samples/common/sampleOptions.cpp (trtexec's option parser and --help text):
#   https://github.com/NVIDIA/TensorRT/blob/v10.3.0/samples/common/sampleOptions.cpp
#   --onnx=<file>                  BaseModelOptions::parse
#   --saveEngine=<file>            "Save the serialized engine" (BuildOptions::parse, as are all below)
#   --stronglyTyped                "Create a strongly typed network. (default = disabled)"; with it,
#                                  --fp16/--int8/--int4 are disabled with a warning, so none is passed
#   --memPoolSize=workspace:<N>    pool "workspace"; a size without a suffix is in MiB
#   --builderOptimizationLevel=<N> "Valid values include integers from 0 to ... 5" (default 3)
#   --timingCacheFile=<file>       "Save/load the serialized global timing cache"
#   --skipInference                "Exit after the engine has been built and skip inference perf measurement"
# and the trtexec README at the same tag (samples/trtexec/README.md: --stronglyTyped, --skipInference).
# All seven are still parsed in 11.1 (same file, tag v11.1), where --stronglyTyped is "[Deprecated]
# Strongly typed network is now enabled by default. This flag is a no-op."
TRTEXEC_FLAGS = ("--onnx", "--saveEngine", "--stronglyTyped", "--memPoolSize", "--builderOptimizationLevel",
                 "--timingCacheFile", "--skipInference")


def trtexec_lines(manifest: Manifest, workspace_mib: int, builder_optimization_level: int) -> list[str]:
    """One `trtexec` call per graph, equivalent to the Python builder's settings (tensorrt.py)."""
    def call(onnx_file: str) -> str:
        engine = Path(onnx_file).with_suffix(".engine").name
        args = [f"--onnx={onnx_file}", f"--saveEngine={engine}", "--stronglyTyped", f"--memPoolSize=workspace:{workspace_mib}",
                f"--builderOptimizationLevel={builder_optimization_level}", f"--timingCacheFile={TIMING_CACHE}", "--skipInference"]
        return " ".join(['"${TRTEXEC}"', *(shlex.quote(a) for a in args)])  # quoted: file names come from the manifest
    return [call(spec.file) for spec in manifest.graphs.values()]


def build_script(manifest: Manifest, workspace_mib: int, builder_optimization_level: int, bits: int) -> str:
    """A POSIX sh script (JetPack's /bin/sh is dash), shellcheck-clean; tests lint and run it."""
    return "\n".join([
        "#!/bin/sh",
        "# Build TensorRT engines from this bundle with trtexec. The same build, plus the parity",
        "# check and a manifest the qsched-export runtimes read, is:",
        f"#   qsched-export build --from . --target tensorrt --bits {bits}",
        "# Flags as TensorRT 10.3's trtexec documents them (JetPack 6.1/6.2).",
        "# TensorRT 11.x is always strongly typed: --stronglyTyped is a deprecated no-op there.",
        "# memPoolSize is in MiB; lower it if the build runs out of memory on the device.",
        "set -eu",
        'cd "$(dirname "$0")"',
        'TRTEXEC="${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"',
        'if [ ! -x "${TRTEXEC}" ]; then',
        '  echo "build_engine.sh: error: trtexec not found at ${TRTEXEC}; set TRTEXEC=/path/to/trtexec'
        ' (JetPack installs it in /usr/src/tensorrt/bin)" >&2',
        "  exit 1",
        "fi",
        *trtexec_lines(manifest, workspace_mib, builder_optimization_level),
        "",
    ])


def readme(manifest: Manifest, bits: int, workspace_mib: int) -> str:
    scheme = manifest.scheme.get("name", "?")
    if manifest.scheme.get("text_weights", "float") != "float":
        scheme += f" ({manifest.scheme['text_weights']} text-encoder weights)"
    graphs = ", ".join(spec.file for spec in manifest.graphs.values())
    return f"""# qsched-export TensorRT bundle: {manifest.model.get("id", "?")}, {scheme}, {manifest.steps} steps

Graphs: {graphs} (ONNX opset {manifest.opset}, static shapes, image {manifest.image.height}x{manifest.image.width},
batch {manifest.image.batch}). They passed qsched-export's TensorRT contract check for TensorRT 10.3
(JetPack 6.1/6.2) and current desktop TensorRT. Every file's sha256 is in `manifest.json`.

## On the Jetson Orin (JetPack 6.x, TensorRT from JetPack)

    pip install "qsched-export[runtime]"      # numpy, onnxruntime, tokenizers, pillow: no torch
    qsched-export build --from . --target tensorrt --bits {bits} --workspace-mib {workspace_mib}
    qsched-export run --artifact <built folder> --prompt "..." --out image.png

`build --from` verifies the sha256 of every file, checks the graphs against TensorRT's rules,
builds one engine per graph (strongly typed, timing cache reused), then runs the engines on
`golden.npz` and compares them with the PyTorch references (`parity.json`).

Without Python, `./build_engine.sh` runs the equivalent `trtexec` lines (set `TRTEXEC` if
trtexec is not on PATH; JetPack puts it in /usr/src/tensorrt/bin).

Engines only run on the GPU model and TensorRT version that built them: build on the device.
TensorRT 10.3's ONNX parser documents opsets up to 20 (unconfirmed for 21): if it rejects this
opset-{manifest.opset} bundle, re-bundle INT8 with `--opset 20` (INT4 needs opset 21).
"""


def make_bundle(artifact_dir: str | Path, out_dir: str | Path, *, bits: int, overwrite: bool = False,
                workspace_mib: int | None = None, builder_optimization_level: int = 3) -> Path:
    src = Path(artifact_dir)
    manifest = load_manifest(src)
    require_tensorrt_form(manifest)
    require_contract(graph_paths(src, manifest), DEFAULT_PROFILES)
    workspace_mib = workspace_mib or DEFAULT_WORKSPACE_MIB
    with staged_dir(out_dir, overwrite) as tmp:
        for rel in manifest.files:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, tmp / rel)
        script = tmp / BUILD_SCRIPT
        script.write_text(build_script(manifest, workspace_mib, builder_optimization_level, bits))
        script.chmod(0o755)
        (tmp / README).write_text(readme(manifest, bits, workspace_mib))
        write_manifest(tmp, manifest)
    return Path(out_dir)
