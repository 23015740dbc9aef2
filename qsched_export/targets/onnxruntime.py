"""`onnxruntime` target: each graph optimized offline by ONNX Runtime on explicit execution
providers and saved, so a session on the device starts without re-optimizing.

The optimized graph keeps ORT's fusions of our Q/DQ pattern (QLinearMatMul/QLinearConv ...),
which is where the INT8 speed comes from. It is saved at `extended` level by default: `all`
adds layout transforms (NCHWc) tied to this machine's CPU.
"""

from __future__ import annotations

from pathlib import Path

from qsched_export.errors import QSchedError
from qsched_export.targets.options import BuildOptions
from qsched_export.targets.output import Verify, copy_runtime_files, finish
from runtimes.files import staged_dir
from runtimes.manifest import artifact_path, load_manifest
from runtimes.int4 import ort_source
from runtimes.runners import ort_session_options, resolve_providers

NAME = "onnxruntime"


def optimize_graph(src: Path, dst: Path, level: str, providers: list[str]) -> None:
    import onnxruntime as ort

    options = ort_session_options()
    options.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    options.optimized_model_filepath = str(dst)
    try:
        # w4a8s: the int4 weights folded to int8 first (ORT's own folding peaks at ~24 GB on SD1.5);
        # the optimized graph then holds int8 weights.
        with ort_source(src) as source:
            ort.InferenceSession(source, sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises untyped Fail/InvalidGraph errors
        raise QSchedError(f"onnxruntime could not optimize {src.name}: {str(exc).strip().splitlines()[0]}", "re-export the artifact") from None


def build(artifact_dir: str | Path, options: BuildOptions, *, verify: Verify | None = None) -> Path:
    """Optimize each graph into a staging folder; it replaces `options.out_dir` once complete and `verify`ed."""
    import onnxruntime as ort

    src = Path(artifact_dir)
    manifest = load_manifest(src)
    providers = resolve_providers(options.providers, ort.get_available_providers())
    with staged_dir(options.out_dir, options.overwrite) as tmp:
        files = {}
        for role, spec in manifest.graphs.items():
            name = Path(spec.file).with_suffix(".onnx").name
            optimize_graph(artifact_path(src, spec.file), tmp / name, options.ort_level, providers)
            files[role] = name
        copy_runtime_files(src, tmp, manifest)
        finish(tmp, manifest, files, {"onnxruntime": ort.__version__, "onnxruntime_level": options.ort_level}, verify)
    return options.out_dir
