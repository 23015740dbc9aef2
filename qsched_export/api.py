"""The Python API under the CLI: `build(BuildConfig)` and `bundle(BundleConfig)`, with
`export_artifact(ExportConfig)` (qsched_export.export) and `calibrate(CalibrationConfig)`
(calibration.api) beside them. Each CLI command maps its options onto one config and calls one
function, as Optimum's `main_export` does; the orchestration (find or calibrate coefficients,
export, build, check) lives here.

Layering (one way, tested in tests/cli/test_layering.py): runtimes/ <- qsched_export's core
(sampler, quant, backbones, export, targets) <- calibration/ <- this module and the CLI. Only
this layer may reach calibration, and only when a scheme still needs calibrating.

`build` writes nothing over the previous artifact until the new one passed its parity check (or,
with `check=False`, was built): the target builds into a staging folder beside `out`
(`runtimes.files.staged_dir`), parity runs and `sample.png` is written there (the target's
`verify` hook), and only then does the staging folder replace `out`. The export goes to an owned
scratch folder (`runtimes.files.scratch_dir`) that a killed run's successor removes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from qsched_export import outputs
from qsched_export.errors import QSchedError
from qsched_export.lora import LoraSpec
from runtimes.schemes import BITS, Scheme, scheme_for

Progress = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


def _check_bits(bits: int) -> None:
    if bits not in BITS:
        raise QSchedError(f"--bits must be 4, 8, 16 or 32, got {bits}", "pass --bits 8 (INT8), 4 (INT4), 16 (FP16) or 32 (FP32)")


def _check_steps(steps: int | None) -> None:
    if steps is not None and steps < 1:
        raise QSchedError(f"steps must be >= 1, got {steps}", "pass --steps 4")


def _check_text_weights(text_weights: str | None, from_artifact: Path | None) -> None:
    # The value itself is checked where the scheme is made (runtimes.schemes.Scheme). None, not
    # "float", is the default, so that an explicit --text-weights float with --from is refused too.
    if from_artifact is not None and text_weights is not None:
        raise QSchedError(f"--from takes {from_artifact} with the text-encoder weights it was exported with",
                          "drop --text-weights with --from (export with --text-weights int8 on the workstation)")


@dataclass(frozen=True)
class BuildConfig:
    """One build.

    Args:
        target: `tensorrt`, `onnxruntime` or `ort-mobile`.
        bits: 8, 4, 16 or 32; the scheme it means depends on the target (`quant.scheme_for`).
        model: diffusers folder or hub id (None = the embedded sample). loras: LoRAs fused first.
        coeffs: qsched.json (None = the model folder's own, else `out/<model>.qsched.json`; a
            missing scheme is calibrated into it).
        steps: sampler steps (None = the qsched.json's, else 4). opset: None = the exporter's default.
        from_bundle: build from an exported artifact or bundle instead (torch-free).
        out: the built folder (None = `out/<model>-<target>-<scheme>`). overwrite: replace it.
        workspace_mib, builder_level: TensorRT builder settings. provider: ONNX Runtime execution
            provider for optimizing and checking. check: run the parity check.
        prompt, seed: sample.png's prompt and seed (None = the golden prompt and noise).
        weight_range: int8 weights "full" or "7bit" (None = what this machine's CPU needs for ONNX
            Runtime, full for TensorRT: runtimes.schemes.default_weight_range).
        int8_attention: also quantize attention's two matrix products (static scales).
        text_weights: the text encoders' Linear weights, "float" or "int8" (weight-only, per output
            channel; `runtimes.schemes`); None = float. With `from_bundle` the artifact's own are built.
        fuse_attention: onnxruntime target only: float attention rewritten to ORT's
            MultiHeadAttention at build time (`targets.options.BuildOptions`).
    """

    target: str
    bits: int = 8
    model: str | None = None
    coeffs: Path | None = None
    steps: int | None = None
    opset: int | None = None
    from_bundle: Path | None = None
    out: Path | None = None
    overwrite: bool = False
    workspace_mib: int | None = None
    builder_level: int = 3
    provider: str = "cpu"
    check: bool = True
    prompt: str | None = None
    seed: int = 0
    loras: tuple[LoraSpec, ...] = ()
    weight_range: str | None = None
    int8_attention: bool = False
    text_weights: str | None = None
    fuse_attention: bool = False

    def validate(self) -> "BuildConfig":
        _check_bits(self.bits)
        _check_steps(self.steps)
        if self.seed < 0:
            raise QSchedError(f"seed must be >= 0, got {self.seed}", "pass --seed 0 or another non-negative integer")
        if self.prompt is not None and not self.prompt.strip():
            raise QSchedError("empty prompt", "pass a non-empty --prompt, or leave it out for the golden prompt")
        if self.from_bundle is not None and (self.model is not None or self.loras or self.coeffs is not None):
            raise QSchedError("--from builds an exported artifact as it is", "drop --model, --lora and --coeffs with --from")
        _check_text_weights(self.text_weights, self.from_bundle)
        return self


@dataclass(frozen=True)
class BuildResult:
    out: Path
    scheme: str
    parity: object | None  # runtimes.parity.ParityReport, None with check=False
    image: Path  # sample.png in `out`
    image_seconds: float
    runtime: str
    coefficients: Path | None = None  # the qsched.json used (None: all ones, or --from)


@dataclass(frozen=True)
class BundleConfig:
    """A TensorRT bundle to build on a Jetson: the options of `BuildConfig` that apply to it, and
    `from_artifact` (an exported artifact to bundle instead of exporting)."""

    bits: int = 8
    model: str | None = None
    coeffs: Path | None = None
    steps: int | None = None
    opset: int | None = None
    from_artifact: Path | None = None
    out: Path | None = None
    overwrite: bool = False
    workspace_mib: int | None = None
    builder_level: int = 3
    loras: tuple[LoraSpec, ...] = ()
    weight_range: str | None = None
    int8_attention: bool = False
    text_weights: str | None = None

    def validate(self) -> "BundleConfig":
        _check_bits(self.bits)
        _check_steps(self.steps)
        if self.from_artifact is not None and (self.model is not None or self.loras or self.coeffs is not None):
            raise QSchedError("--from bundles an exported artifact as it is", "drop --model, --lora and --coeffs with --from")
        _check_text_weights(self.text_weights, self.from_artifact)
        return self


@dataclass(frozen=True)
class Coefficients:
    """Where a scheme's coefficients come from: the qsched.json (None: all ones) and the step count."""

    path: Path | None
    steps: int


def qsched_candidates(model: str | None, coeffs: Path | None) -> list[Path]:
    """Where a model's qsched.json is looked for, in order: `--coeffs`, else the model folder's own,
    else `out/<model>.qsched.json` (outputs.py); only the existing ones."""
    from qsched_export.pipeline import resolve_model

    if coeffs is not None:
        if coeffs.is_dir():
            raise QSchedError(f"--coeffs {coeffs} is a folder", "pass the qsched.json file itself")
        if not coeffs.exists():
            raise QSchedError(f"coefficient file {coeffs} not found", "pass an existing qsched.json, or leave --coeffs out")
        return [coeffs]
    return [p for p in (Path(resolve_model(model)) / "qsched.json", outputs.qsched_path(model)) if p.is_file()]


def find_coefficients(model: str | None, coeffs: Path | None, scheme: str, steps: int | None, loras: tuple[LoraSpec, ...] = (),
                      progress: Progress = _quiet) -> Coefficients:
    """The qsched.json holding `scheme` for this model (`qsched_candidates`). A missing scheme is
    calibrated into `--coeffs` or `out/<model>.qsched.json` (never into the model folder). fp32 has
    nothing to calibrate: it exports all coefficients 1, at the guidance of a qsched.json found."""
    from qsched_export.qsched_file import read_qsched

    found = [(path, read_qsched(path)) for path in qsched_candidates(model, coeffs)]
    for path, qfile in found:
        if scheme in qfile.schemes:
            return Coefficients(path, steps or qfile.steps)
    if scheme == "fp32":
        return Coefficients(found[0][0], steps or found[0][1].steps) if found else Coefficients(None, steps or 4)
    from calibration.api import CalibrationConfig, calibrate

    target = coeffs or outputs.qsched_path(model)
    progress(f"scheme {scheme} is not calibrated yet: calibrating it into {target}")
    calibrate(CalibrationConfig(model=model, schemes=(scheme,), steps=steps or 4, out=target, loras=loras).validate(), progress)
    return Coefficients(target, steps or read_qsched(target).steps)


@contextlib.contextmanager
def _exported(out: Path, model: str | None, scheme: Scheme, coefficients: Coefficients, opset: int | None, loras: tuple[LoraSpec, ...],
              progress: Progress) -> Iterator[Path]:
    """Export into an owned scratch folder beside `out` (same filesystem, removed on exit, and by
    the next run if this one is killed) and yield the artifact."""
    from qsched_export.export import ExportConfig, export_artifact
    from runtimes.files import scratch_dir

    with scratch_dir(out.parent, f"{out.name}.export") as scratch:
        config = ExportConfig(out=scratch / "onnx", model=model, scheme=scheme, coeffs=coefficients.path, steps=coefficients.steps,
                              loras=loras, **({"opset": opset} if opset is not None else {}))
        yield export_artifact(config, progress=progress)


def build(config: BuildConfig, progress: Progress = _quiet) -> BuildResult:
    """Export (or take `from_bundle`) an artifact, build it for the target, check parity, write
    sample.png, and only then replace `out`. A failed parity check raises `runtimes.parity.ParityError`
    (its `report` holds the table) and leaves `out` as it was."""
    from qsched_export.targets import BuildOptions
    from qsched_export.targets import build as build_target
    from qsched_export.targets.onnxruntime import require_fusable
    from runtimes.files import check_output_folder

    config.validate()
    options = BuildOptions(config.target, outputs.OUT_ROOT, workspace_mib=config.workspace_mib,
                           builder_optimization_level=config.builder_level, providers=(config.provider,), fuse_attention=config.fuse_attention)
    if config.from_bundle is not None:
        from runtimes.manifest import load_manifest

        manifest = load_manifest(config.from_bundle)  # verifies every sha256 before anything runs
        held = Scheme.from_dict(manifest.scheme)
        if held.bits != config.bits:
            raise QSchedError(f"{config.from_bundle} holds scheme {held.name} (--bits {held.bits}), not --bits {config.bits}",
                              f"pass --bits {held.bits}, or bundle --bits {config.bits} on the workstation")
        out = check_output_folder(config.out or outputs.build_dir(str(manifest.model.get("id")), config.target, held.folder_tag), config.overwrite)
        progress(f"building {config.target} from {config.from_bundle}: scheme {held.name}, {manifest.steps} steps")
        return _build_and_check(build_target, config.from_bundle, replace(options, out_dir=out, overwrite=config.overwrite), config, held.name,
                                None, progress)
    scheme = scheme_for(config.target, config.bits, weight_range=config.weight_range, int8_attention=config.int8_attention,
                        text_weights=config.text_weights)
    out = check_output_folder(config.out or outputs.build_dir(config.model, config.target, scheme.folder_tag), config.overwrite)
    if config.target == "tensorrt":
        from runtimes.runners import import_tensorrt

        import_tensorrt()  # before a long export: say now that it cannot be built here
    elif config.target == "ort-mobile":
        from qsched_export.targets.ort_mobile import require_mobile_scheme

        require_mobile_scheme(scheme)  # before a long export, as the target itself refuses it
    if options.fuse_attention:
        require_fusable(scheme)  # likewise
    progress(f"building {config.target} with scheme {scheme.name} ({scheme.describe()})")
    coefficients = find_coefficients(config.model, config.coeffs, scheme.name, config.steps, config.loras, progress)
    start = time.perf_counter()
    with _exported(out, config.model, scheme, coefficients, config.opset, config.loras, progress) as artifact:
        progress(f"exported in {time.perf_counter() - start:.1f} s (coefficients: {coefficients.path or 'all ones'})")
        return _build_and_check(build_target, artifact, replace(options, out_dir=out, overwrite=config.overwrite), config, scheme.name,
                                coefficients.path, progress)


def _build_and_check(build_target, artifact: Path, options, config: BuildConfig, scheme: str, coefficients: Path | None,
                     progress: Progress) -> BuildResult:
    """Build into the target's staging folder; inside it, check parity (unless skipped) and write
    sample.png; the staging folder replaces `options.out_dir` only when both succeeded."""
    from runtimes.parity import check_artifact, load_golden
    from runtimes.pipeline import Text2ImagePipeline, save_png

    done: dict = {}

    def verify(stage: Path) -> None:
        report = check_artifact(stage, (config.provider,)) if config.check else None  # raises ParityError on a failure
        pipe = Text2ImagePipeline(stage, (config.provider,))
        start = time.perf_counter()
        if config.prompt is None:
            # The golden prompt and noise: the very image the parity table compared.
            golden = load_golden(stage / pipe.manifest.golden)
            image = pipe.run({name: golden[name] for name in pipe.input_names}).image
        else:
            image = pipe([config.prompt] * pipe.batch, seed=config.seed).image
        done.update(report=report, seconds=time.perf_counter() - start, runtime=pipe.description)
        save_png(image[0], stage / "sample.png")

    out = build_target(artifact, options, verify=verify)
    progress(f"built {out}")
    return BuildResult(out, scheme, done["report"], out / "sample.png", done["seconds"], done["runtime"], coefficients)


def bundle(config: BundleConfig, progress: Progress = _quiet) -> Path:
    """Package the TensorRT form (ONNX, manifest, golden data, tokenizers, build_engine.sh, README) to build on a Jetson."""
    from qsched_export.targets.bundle import make_bundle
    from qsched_export.targets.options import BuildOptions
    from runtimes.files import check_output_folder

    config.validate()
    BuildOptions("tensorrt", outputs.OUT_ROOT, workspace_mib=config.workspace_mib, builder_optimization_level=config.builder_level)  # validates
    kwargs = {"bits": config.bits, "overwrite": config.overwrite, "workspace_mib": config.workspace_mib,
              "builder_optimization_level": config.builder_level}
    if config.from_artifact is not None:
        out = check_output_folder(config.out or outputs.OUT_ROOT / f"{config.from_artifact.name}-bundle", config.overwrite)
        return make_bundle(config.from_artifact, out, **kwargs)
    scheme = scheme_for("tensorrt", config.bits, weight_range=config.weight_range, int8_attention=config.int8_attention,
                        text_weights=config.text_weights)
    out = check_output_folder(config.out or outputs.bundle_dir(config.model, scheme.folder_tag), config.overwrite)
    progress(f"bundling tensorrt with scheme {scheme.name} ({scheme.describe()})")
    coefficients = find_coefficients(config.model, config.coeffs, scheme.name, config.steps, config.loras, progress)
    with _exported(out, config.model, scheme, coefficients, config.opset, config.loras, progress) as artifact:
        return make_bundle(artifact, out, **kwargs)
