"""`qsched-export build` and `qsched-export bundle`.

`build` on a workstation: the scheme `--bits` means for the target -> its coefficients from
qsched.json (calibrated first if missing) -> export -> build the target -> check parity ->
`sample.png`. `build --from BUNDLE` on a device: verify the bundle, build, check; no torch.
`bundle --target tensorrt`: export and package the TensorRT form for building on a Jetson.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import typer

from qsched_export.cli.check import provider_list, run_check
from qsched_export.cli.common import console, note_default_model, user_errors
from qsched_export.errors import QSchedError

TARGET_HELP = "tensorrt (engines, built on this GPU), onnxruntime (optimized ONNX) or ort-mobile (.ort + operator config)."
BITS = (4, 8, 16, 32)
OUT_ROOT = Path("out")
SAMPLE_NAME = "shapes-sd"


def _check_bits(bits: int) -> None:
    if bits not in BITS:
        raise QSchedError(f"--bits must be 4, 8, 16 or 32, got {bits}", "pass --bits 8 (INT8), 4 (INT4), 16 (FP16) or 32 (FP32)")


def _model_name(model: str | None) -> str:
    return SAMPLE_NAME if model is None else Path(model.rstrip("/")).name


def _bits_of(scheme: dict) -> int:
    """`--bits` as the scheme in a manifest expresses it (weight bits, else the float width)."""
    return scheme.get("weight_bits") or (16 if scheme.get("float_dtype") == "float16" else 32)


def _coefficients_file(model: str | None, coeffs: Path | None, scheme: str, steps: int | None) -> tuple[Path | None, int, float | None]:
    """The qsched.json holding `scheme`'s coefficients, the step count and (for fp32 only) the
    guidance to export with, so an fp32 build compares like for like with the calibrated ones.

    Looks in `--coeffs`, else beside the model, else `out/<model>.qsched.json`. A missing
    scheme is calibrated into `--coeffs` or `out/<model>.qsched.json` (never into the model
    folder); fp32 has nothing to calibrate and exports with all coefficients 1.
    """
    from qsched_export.pipeline import resolve_model
    from qsched_export.qsched_file import read_qsched

    own = OUT_ROOT / f"{_model_name(model)}.qsched.json"
    found = [(path, read_qsched(path)) for path in ([coeffs] if coeffs is not None else [Path(resolve_model(model)) / "qsched.json", own])
             if path.is_file()]
    for path, qfile in found:
        if scheme in qfile.schemes:
            return path, steps or qfile.steps, None
    if scheme == "fp32":
        return (None, steps or found[0][1].steps, found[0][1].guidance_scale) if found else (None, steps or 4, None)
    from calibration.api import CalibrationConfig, calibrate

    target = coeffs or own
    console.print(f"[yellow]scheme {scheme} is not calibrated yet: calibrating it into {target}[/]", highlight=False)
    calibrate(CalibrationConfig(model=model, schemes=(scheme,), steps=steps or 4, out=target).validate())
    return target, steps or read_qsched(target).steps, None


@contextlib.contextmanager
def _exported(out: Path, model: str | None, scheme: str, calibration: tuple[Path | None, int, float | None], opset: int | None) -> Iterator[Path]:
    """Export into a scratch folder beside `out` (same filesystem, removed on exit) and yield the artifact."""
    from qsched_export.export import ExportConfig, export_artifact

    coeffs, steps, guidance = calibration
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out.parent) as scratch:
        config = ExportConfig(out=Path(scratch) / "onnx", model=model, scheme=scheme, coeffs=coeffs, steps=steps, guidance_scale=guidance,
                              **({"opset": opset} if opset is not None else {}))
        yield export_artifact(config, progress=lambda msg: console.print(f"[dim]  {msg}[/]", highlight=False))


def _finish(out: Path, check: bool, provider: str, prompt: str | None, seed: int) -> bool:
    """Check parity (unless skipped) and write sample.png with the built runtime."""
    from runtimes.parity import load_golden
    from runtimes.pipeline import Text2ImagePipeline, save_png

    passed = run_check(out, provider) if check else True
    pipe = Text2ImagePipeline(out, provider_list(provider))
    start = time.perf_counter()
    if prompt is None:
        # The golden prompt and noise: the very image the parity table compared.
        golden = load_golden(out / pipe.manifest.golden)
        image = pipe.run(golden["input_ids"], golden["latents"], golden.get("noise")).image
    else:
        image = pipe([prompt] * pipe.batch, seed=seed).image
    seconds = time.perf_counter() - start
    save_png(image[0], out / "sample.png")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    console.print(f"wrote {out / 'sample.png'} ({pipe.description}, {seconds:.2f} s per image); artifact {size / 1e6:.1f} MB in {out}", highlight=False)
    return passed


def build(
    target: str = typer.Option(..., "--target", help=TARGET_HELP),
    bits: int = typer.Option(8, "--bits", help="8 = w8a8; 4 = w4a16 for tensorrt, w4a8 for onnxruntime/ort-mobile; 16 = fp16; 32 = fp32."),
    model: str | None = typer.Option(None, "--model", help="diffusers folder or hub id (default: the embedded sample)."),
    coeffs: Path | None = typer.Option(None, "--coeffs", help="qsched.json (default: the model's own, else out/<model>.qsched.json; calibrated if the scheme is missing)."),
    steps: int | None = typer.Option(None, "--steps", help="Sampler steps (default: the qsched.json's, else 4)."),
    opset: int | None = typer.Option(None, "--opset", help="ONNX opset of the export (default: the exporter's, 21; INT4 needs 21)."),
    from_bundle: Path | None = typer.Option(None, "--from", help="Build from an exported artifact or bundle, without torch."),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default: out/<model>-<target>-<scheme>)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the output folder if it exists."),
    workspace_mib: int | None = typer.Option(None, "--workspace-mib", help="TensorRT builder workspace limit in MiB (cap it on Orin)."),
    builder_level: int = typer.Option(3, "--builder-level", help="TensorRT builder optimization level 0-5."),
    provider: str = typer.Option("cpu", "--provider", help="ONNX Runtime execution provider for optimizing and checking: cpu, cuda or tensorrt."),
    no_check: bool = typer.Option(False, "--no-check", help="Skip the parity check."),
    prompt: str | None = typer.Option(None, "--prompt", help="Prompt of sample.png (default: the golden prompt and noise)."),
    seed: int = typer.Option(0, "--seed", help="Noise seed of sample.png with --prompt."),
) -> None:
    """Export (or take --from) an artifact and build it for a target, then check parity and write sample.png."""
    from qsched_export.targets import BuildOptions
    from qsched_export.targets import build as build_target
    from qsched_export.targets.output import refuse_existing

    with user_errors():
        _check_bits(bits)
        options = BuildOptions(target, OUT_ROOT, workspace_mib=workspace_mib, builder_optimization_level=builder_level, providers=provider_list(provider))
        if from_bundle is not None:
            from runtimes.manifest import load_manifest

            manifest = load_manifest(from_bundle)  # verifies every sha256 before anything runs
            scheme = str(manifest.scheme.get("name"))
            if _bits_of(manifest.scheme) != bits:
                raise QSchedError(f"{from_bundle} holds scheme {scheme} (--bits {_bits_of(manifest.scheme)}), not --bits {bits}",
                                  f"pass --bits {_bits_of(manifest.scheme)}, or bundle --bits {bits} on the workstation")
            out = out or OUT_ROOT / f"{Path(str(manifest.model.get('id'))).name}-{target}-{scheme}"
            refuse_existing(out, overwrite)
            console.print(f"building [bold]{target}[/] from {from_bundle}: scheme [bold]{scheme}[/], {manifest.steps} steps", highlight=False)
            build_target(from_bundle, replace(options, out_dir=out, overwrite=overwrite))
        else:
            from qsched_export.quant import scheme_for

            note_default_model(model)
            scheme = scheme_for(target, bits)
            out = out or OUT_ROOT / f"{_model_name(model)}-{target}-{scheme.name}"
            refuse_existing(out, overwrite)
            if target == "tensorrt":
                from qsched_export.targets.tensorrt import import_tensorrt

                import_tensorrt()  # before a long export: say now that it cannot be built here
            console.print(f"building [bold]{target}[/] with scheme [bold]{scheme.name}[/] ({_describe(scheme)})", highlight=False)
            calibration = _coefficients_file(model, coeffs, scheme.name, steps)
            start = time.perf_counter()
            with _exported(out, model, scheme.name, calibration, opset) as artifact:
                console.print(f"[dim]exported in {time.perf_counter() - start:.1f} s (coefficients: {calibration[0] or 'all ones'})[/]", highlight=False)
                build_target(artifact, replace(options, out_dir=out, overwrite=overwrite))
        console.print(f"built {out}", highlight=False)
        passed = _finish(out, not no_check, provider, prompt, seed)
    if not passed:
        raise typer.Exit(code=1)


def _describe(scheme) -> str:
    def layer(kind: str, spec) -> str:
        if spec is None:
            return f"{kind} {scheme.float_dtype}"
        acts = "float" if spec.act_bits is None else f"{spec.act_mode} int{spec.act_bits}"
        return f"{kind} int{spec.weight_bits} weights, {acts} activations"
    return f"{layer('Linear', scheme.linear)}; {layer('Conv', scheme.conv)}"


def bundle(
    target: str = typer.Option("tensorrt", "--target", help="Only tensorrt: engines must be built on the device."),
    bits: int = typer.Option(8, "--bits", help="8 = w8a8, 4 = w4a16 (INT4 weight-only Linear, INT8 Conv), 16 = fp16, 32 = fp32."),
    model: str | None = typer.Option(None, "--model", help="diffusers folder or hub id (default: the embedded sample)."),
    coeffs: Path | None = typer.Option(None, "--coeffs", help="qsched.json (calibrated first if the scheme is missing)."),
    steps: int | None = typer.Option(None, "--steps", help="Sampler steps (default: the qsched.json's, else 4)."),
    opset: int | None = typer.Option(None, "--opset", help="ONNX opset of the export (default: the exporter's, 21; INT4 needs 21)."),
    from_artifact: Path | None = typer.Option(None, "--from", help="Bundle an exported artifact instead of exporting."),
    out: Path | None = typer.Option(None, "--out", help="Bundle folder (default: out/<model>-tensorrt-<scheme>-bundle)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the bundle folder if it exists."),
    workspace_mib: int | None = typer.Option(None, "--workspace-mib", help="Workspace in build_engine.sh and the README (default 2048 MiB)."),
    builder_level: int = typer.Option(3, "--builder-level", help="TensorRT builder optimization level 0-5."),
) -> None:
    """Package the TensorRT form (ONNX, manifest, golden data, tokenizer, build_engine.sh, README) to build on a Jetson."""
    from qsched_export.targets.bundle import make_bundle
    from qsched_export.targets.options import BuildOptions
    from qsched_export.targets.output import refuse_existing

    with user_errors():
        _check_bits(bits)
        BuildOptions(target, OUT_ROOT, workspace_mib=workspace_mib, builder_optimization_level=builder_level)  # validates
        if target != "tensorrt":
            raise QSchedError(f"bundle is for --target tensorrt, got {target}", f"run qsched-export build --target {target}: it needs no device build")
        if from_artifact is not None:
            out = out or OUT_ROOT / f"{from_artifact.name}-bundle"
            refuse_existing(out, overwrite)
            make_bundle(from_artifact, out, bits=bits, overwrite=overwrite, workspace_mib=workspace_mib, builder_optimization_level=builder_level)
        else:
            from qsched_export.quant import scheme_for

            note_default_model(model)
            scheme = scheme_for(target, bits)
            out = out or OUT_ROOT / f"{_model_name(model)}-tensorrt-{scheme.name}-bundle"
            refuse_existing(out, overwrite)
            console.print(f"bundling [bold]tensorrt[/] with scheme [bold]{scheme.name}[/] ({_describe(scheme)})", highlight=False)
            calibration = _coefficients_file(model, coeffs, scheme.name, steps)
            with _exported(out, model, scheme.name, calibration, opset) as artifact:
                make_bundle(artifact, out, bits=bits, overwrite=overwrite, workspace_mib=workspace_mib, builder_optimization_level=builder_level)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    console.print(f"wrote bundle {out}: {', '.join(files)}", highlight=False)
    console.print(f"copy it to the Jetson, then: qsched-export build --from {out.name} --target tensorrt --bits {bits}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("build")(build)
    app.command("bundle")(bundle)
