"""`ort-mobile` target: ORT format (`.ort`) graphs from ONNX Runtime's own converter, plus the
`required_operators.config` that a reduced ONNX Runtime build takes
(`build.sh --minimal_build --include_ops_by_config required_operators.config`), packaged with
the manifest, tokenizer and golden data. The ONNX Runtime Python package runs `.ort` files
too, so `check` verifies the packaged graphs on this machine.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from qsched_export.errors import QSchedError
from qsched_export.targets.options import BuildOptions
from qsched_export.targets.output import Verify, copy_runtime_files, finish
from runtimes.files import staged_dir
from runtimes.manifest import artifact_path, load_manifest
from runtimes.schemes import Scheme

NAME = "ort-mobile"
OPS_CONFIG = "required_operators.config"


def convert_command(onnx_dir: Path, out_dir: Path, platform: str) -> list[str]:
    """argv for ORT's converter: fixed optimizations (applied now, for `platform`), no shell."""
    return [sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(onnx_dir), "--output_dir", str(out_dir),
            "--optimization_style", "Fixed", "--target_platform", platform]


def require_mobile_scheme(scheme: Scheme) -> None:
    """Refuse int8 weight-only Linear layers (int8 text-encoder weights, or the w8a16 scheme): the
    ORT-format converter fuses their DequantizeLinear -> MatMul into MatMulNBits at accuracy level
    4, which quantizes the activations to int8, and takes no session option to keep them float
    (`runtimes.runners.ort_session_options`), so the package would not compute what was exported
    (tiny FLUX, fp32: step-1 max abs 6.7e-4 against the 1e-4 gate)."""
    if scheme.text_weights != "float":
        raise QSchedError(f"ort-mobile cannot keep {scheme.text_weights} text-encoder weights weight-only (ONNX Runtime's ORT-format "
                          "converter runs them with int8 activations)", "drop --text-weights for ort-mobile, or build --target onnxruntime")
    linear = scheme.linear
    if linear is not None and linear.weight_bits == 8 and linear.act_bits is None:
        raise QSchedError(f"ort-mobile cannot keep {scheme.name}'s int8 weights weight-only (ONNX Runtime's ORT-format converter runs "
                          "them with int8 activations)", "use --bits 8 (w8a8) or --bits 4 (w4a8) for ort-mobile")


def _require_loadable(path: Path) -> None:
    """The converter can write ORT files that ONNX Runtime then refuses (ORT 1.32's ORT format
    has no INT4 tensor type, for one): load each, so such a package is never shipped."""
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises untyped errors
        detail = str(exc).strip().splitlines()[0]
        raise QSchedError(f"ONNX Runtime cannot load the converted {path.name}: {detail}",
                          "INT4 tensors (w4a16) do not fit the ORT format: use --bits 4 (w4a8, MatMulNBits) or --bits 8 for ort-mobile") from None


def build(artifact_dir: str | Path, options: BuildOptions, *, verify: Verify | None = None) -> Path:
    """Convert the graphs into a staging folder; it replaces `options.out_dir` once complete and `verify`ed."""
    import onnxruntime as ort

    src = Path(artifact_dir)
    manifest = load_manifest(src)
    require_mobile_scheme(Scheme.from_dict(manifest.scheme))
    with staged_dir(options.out_dir, options.overwrite) as tmp:
        # The converter takes a folder and converts every .onnx under it: give it only the graphs.
        # Their float attention stays unfused (BuildOptions.fuse_attention is for the onnxruntime target):
        # MultiHeadAttention is a com.microsoft contrib op, absent from reduced builds made with
        # --disable_contrib_ops (a usual size saving on phones), and its speed-up is measured on x86 only.
        staging = tmp / ".onnx"
        staging.mkdir()
        for spec in manifest.graphs.values():
            shutil.copy2(artifact_path(src, spec.file), staging / Path(spec.file).name)
        result = subprocess.run(convert_command(staging, tmp, options.mobile_platform), capture_output=True, text=True)
        if result.returncode != 0:
            last = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1]
            raise QSchedError(f"ONNX Runtime's ORT-format converter failed: {last}", "run it by hand to see the full log: " + " ".join(convert_command(staging, tmp, options.mobile_platform)[1:]))
        shutil.rmtree(staging)
        files = {role: Path(spec.file).with_suffix(".ort").name for role, spec in manifest.graphs.items()}
        missing = [f for f in [*files.values(), OPS_CONFIG] if not (tmp / f).is_file()]
        if missing:
            raise QSchedError(f"the ORT-format converter did not write {', '.join(missing)}", "check the onnxruntime installation")
        for name in files.values():
            _require_loadable(tmp / name)
        # The converter names the models by their temp path; the package names them by file.
        config = tmp / OPS_CONFIG
        config.write_text("".join(f"# - {Path(line[4:].strip()).name}\n" if line.startswith("# - ") else line
                                  for line in config.read_text().splitlines(keepends=True)))
        copy_runtime_files(src, tmp, manifest)
        finish(tmp, manifest, files, {"onnxruntime": ort.__version__, "ort_mobile_platform": options.mobile_platform}, verify)
    return options.out_dir
