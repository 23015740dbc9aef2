"""`onnxruntime` target: each graph optimized offline by ONNX Runtime on explicit execution
providers and saved, so a session on the device starts without re-optimizing.

The optimized graph keeps ORT's fusions of our Q/DQ pattern (QLinearMatMul/QLinearConv ...),
which is where the INT8 speed comes from. It is saved at `extended` level by default: `all`
adds layout transforms (NCHWc) tied to this machine's CPU. With `fuse_attention`, float attention
is first rewritten to ORT's MultiHeadAttention (`ort_attention`), for every scheme alike.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from qsched_export.errors import QSchedError
from qsched_export.targets.options import BuildOptions
from qsched_export.targets.ort_attention import fuse_attention
from qsched_export.targets.output import Verify, copy_runtime_files, finish
from runtimes.files import staged_dir
from runtimes.manifest import artifact_path, load_manifest
from runtimes.int4 import ort_source
from runtimes.runners import ort_session_options, resolve_providers
from runtimes.schemes import Scheme

NAME = "onnxruntime"


def _ort_optimize(src: Path, dst: Path, level: str, providers: list[str], *, disabled: tuple[str, ...] = (), external_weights: bool = False) -> None:
    import onnxruntime as ort

    options = ort_session_options()
    options.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    options.optimized_model_filepath = str(dst)
    if external_weights:
        # Weights in a side file, so a graph past protobuf's 2 GB cap (an FP32 SD1.5 UNet) can be written.
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", f"{dst.name}.data")
    try:
        # w4a8s: the int4 weights folded to int8 first (ORT's own folding peaks at ~24 GB on SD1.5);
        # the optimized graph then holds int8 weights.
        with ort_source(src) as source:
            ort.InferenceSession(source, sess_options=options, providers=providers, disabled_optimizers=list(disabled))
    except Exception as exc:  # onnxruntime raises untyped Fail/InvalidGraph errors
        raise QSchedError(f"onnxruntime could not optimize {src.name}: {str(exc).strip().splitlines()[0]}", "re-export the artifact") from None


def fuse_attention_graph(src: Path, dst: Path, providers: list[str]) -> tuple[int, bool]:
    """`src` constant-folded by ORT (basic level), its float attention fused (`fuse_attention`) and
    saved to `dst`; returns how many attentions, and whether the weights went to `dst`.data (past
    protobuf's 2 GB cap, an FP32 SD1.5 UNet). Writes nothing when none matched.

    ORT's QDQPropagationTransformer stays off in that pass: it moves the Q/DQ of the output
    projection's input up between P·V and the head-merging Transpose, where the pattern no longer
    matches; the final optimization (`optimize_graph`) runs it on the fused graph."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="qsched-attn-", dir=dst.parent) as tmp:
        folded = Path(tmp) / src.name
        _ort_optimize(src, folded, "basic", providers, disabled=("QDQPropagationTransformer",), external_weights=True)
        model = onnx.load(str(folded))
        count = fuse_attention(model)
        big = sum(t.ByteSize() for t in model.graph.initializer) > (1 << 31) - (1 << 26)
        if count:
            onnx.save_model(model, str(dst), save_as_external_data=big, all_tensors_to_one_file=True, location=f"{dst.name}.data")
    return count, big


def optimize_graph(src: Path, dst: Path, level: str, providers: list[str], fuse: bool = False) -> int:
    """`src` optimized by ORT at `level` into `dst`, float attention fused first if `fuse`; returns how many attentions were fused."""
    if not fuse:
        _ort_optimize(src, dst, level, providers)
        return 0
    with tempfile.TemporaryDirectory(prefix="qsched-fused-", dir=dst.parent) as tmp:
        fused = Path(tmp) / src.name
        count, big = fuse_attention_graph(src, fused, providers)
        # ORT writes a graph read with external weights with references to them: a big one's go beside `dst`.
        _ort_optimize(fused if count else src, dst, level, providers, external_weights=big and count > 0)
    return count


def require_fusable(scheme: Scheme) -> None:
    """Refuse `fuse_attention` for a float scheme: MultiHeadAttention's blocked softmax moves FP32
    latents by float rounding up to the FP32 parity gate (1.04e-4 against 1e-4 on a tiny LCM
    pipeline), so such a build would fail parity for no error of ours; quantized gates allow for it."""
    if not scheme.quantized:
        raise QSchedError(f"--fuse-attention is for quantized builds, not {scheme.name} (the fused softmax order moves float latents "
                          "past the float parity gate)", "drop --fuse-attention, or build --bits 8 or 4")


def build(artifact_dir: str | Path, options: BuildOptions, *, verify: Verify | None = None) -> Path:
    """Optimize each graph into a staging folder; it replaces `options.out_dir` once complete and `verify`ed."""
    import onnxruntime as ort

    src = Path(artifact_dir)
    manifest = load_manifest(src)
    if options.fuse_attention:
        require_fusable(Scheme.from_dict(manifest.scheme))
    providers = resolve_providers(options.providers, ort.get_available_providers())
    with staged_dir(options.out_dir, options.overwrite) as tmp:
        files, fused = {}, 0
        for role, spec in manifest.graphs.items():
            name = Path(spec.file).with_suffix(".onnx").name
            fused += optimize_graph(artifact_path(src, spec.file), tmp / name, options.ort_level, providers, options.fuse_attention)
            files[role] = name
        copy_runtime_files(src, tmp, manifest)
        tools = {"onnxruntime": ort.__version__, "onnxruntime_level": options.ort_level}
        if options.fuse_attention:
            tools["fused_attentions"] = str(fused)
        finish(tmp, manifest, files, tools, verify)
    return options.out_dir
