"""`tensorrt` target: one engine per graph, built with the TensorRT Python API on this device.

Every graph passes the contract checker first (a graph that fails never reaches the builder).
Networks are strongly typed: precision is expressed in the graph (Q/DQ, FP16 initializers and
Casts), as TensorRT 11 requires and 10.x recommends for explicit quantization, so no FP16/INT8
builder flags are set. Engines are tied to the GPU and TensorRT version that built them, so the
manifest records the TensorRT version and the runner refuses an engine from another.
"""

from __future__ import annotations

from pathlib import Path

from qsched_export.errors import QSchedError
from qsched_export.targets.options import BuildOptions
from qsched_export.targets.output import Verify, copy_runtime_files, finish
from qsched_export.targets.tensorrt_contract import DEFAULT_PROFILES, require_contract
from runtimes.errors import RunnerError
from runtimes.files import atomic_file, staged_dir
from runtimes.manifest import Manifest, artifact_path, load_manifest
from runtimes.runners import ENGINE_SUFFIX, import_tensorrt

NAME = "tensorrt"


def profile_for(version: str) -> tuple[str, ...]:
    """The contract profile of an installed TensorRT: releases before 10.15 get 10.3's rules."""
    major, minor = (int(p) for p in version.split(".")[:2])
    return ("10.15",) if (major, minor) >= (10, 15) else ("10.3",)


def require_tensorrt_form(manifest: Manifest) -> None:
    if manifest.target_form == "matmulnbits":
        raise QSchedError(f"this artifact holds scheme {manifest.scheme.get('name')} as MatMulNBits, an ONNX Runtime-only op",
                          "export it for --target tensorrt (INT4 as blockwise DequantizeLinear, scheme w4a16)")


def graph_paths(artifact_dir: Path, manifest: Manifest) -> list[Path]:
    return [artifact_path(artifact_dir, spec.file) for spec in manifest.graphs.values()]


def build_engine(trt, onnx_path: Path, options: BuildOptions, timing_cache: bytes) -> tuple[bytes, bytes]:
    """Parse and build one graph; returns the serialized engine and the updated timing cache."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # STRONGLY_TYPED is absent (always on) where the flag was retired.
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if flag is None else 1 << int(flag))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "no detail"
        raise QSchedError(f"TensorRT {trt.__version__} could not parse {onnx_path.name}: {errors}", "check the graph with the contract checker and TENSORRT_NOTES.md")
    config = builder.create_builder_config()
    if options.workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    config.builder_optimization_level = options.builder_optimization_level
    # A cache from another GPU or TensorRT version is refused; it is only a cache, so start afresh.
    if not config.set_timing_cache(config.create_timing_cache(timing_cache), ignore_mismatch=False):
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise QSchedError(f"TensorRT {trt.__version__} failed to build {onnx_path.name}",
                          "see TensorRT's log above; on Orin try a smaller --workspace-mib or a lower builder level")
    return bytes(plan), bytes(config.get_timing_cache().serialize())


def build(artifact_dir: str | Path, options: BuildOptions, *, verify: Verify | None = None) -> Path:
    """Build one engine per graph into a staging folder; it replaces `options.out_dir` once
    complete and `verify`ed. The timing cache is written back after."""
    src = Path(artifact_dir)
    manifest = load_manifest(src)
    require_tensorrt_form(manifest)
    # The contract is checked even where TensorRT is missing (its violations are the more useful
    # message), and a graph that fails never reaches the builder.
    missing: RunnerError | None = None
    try:
        trt = import_tensorrt()
    except RunnerError as exc:
        trt, missing = None, exc
    require_contract(graph_paths(src, manifest), profile_for(trt.__version__) if trt is not None else DEFAULT_PROFILES)
    if missing is not None:
        raise missing
    cache_path = options.timing_cache_path
    timing_cache = cache_path.read_bytes() if cache_path.is_file() else b""
    with staged_dir(options.out_dir, options.overwrite) as tmp:
        files = {}
        for role, spec in manifest.graphs.items():
            engine, timing_cache = build_engine(trt, artifact_path(src, spec.file), options, timing_cache)
            files[role] = Path(spec.file).with_suffix(ENGINE_SUFFIX).name
            (tmp / files[role]).write_bytes(engine)
        copy_runtime_files(src, tmp, manifest)
        finish(tmp, manifest, files, {"tensorrt": trt.__version__}, verify)
    with atomic_file(cache_path, "wb") as f:
        f.write(timing_cache)
    return options.out_dir
