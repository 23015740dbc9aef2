"""`qsched-export build` and `qsched-export bundle`: options -> `BuildConfig` / `BundleConfig` ->
`qsched_export.api.build` / `bundle`; print progress, the parity table and the result."""

from __future__ import annotations

from pathlib import Path

import typer

from qsched_export.cli.check import print_report, provider_list
from qsched_export.cli.common import console, note_default_model, user_errors
from qsched_export.cli.options import (
    int8_attention_option, lora_option, parse_loras, progress_printer, text_weights_option, weight_range, weight_range_option,
)

TARGET_HELP = "tensorrt (engines, built on this GPU), onnxruntime (optimized ONNX) or ort-mobile (.ort + operator config)."
OPSET_HELP = "ONNX opset of the export (default: 20 for INT8 with static activations, else 21; INT4 needs 21)."


def build(
    target: str = typer.Option(..., "--target", help=TARGET_HELP),
    bits: int = typer.Option(8, "--bits", help="8 = w8a8; 4 = w4a16 for tensorrt, w4a8 for onnxruntime/ort-mobile (MatMulNBits: a download-size "
                             "format, slower than FP32 on CPU); 16 = fp16; 32 = fp32."),
    model: str | None = typer.Option(None, "--model", help="diffusers folder or hub id (default: the embedded sample)."),
    lora: list[str] = lora_option(),
    coeffs: Path | None = typer.Option(None, "--coeffs", help="qsched.json (default: the model's own, else out/<model>.qsched.json; calibrated if the scheme is missing)."),
    steps: int | None = typer.Option(None, "--steps", help="Sampler steps (default: the qsched.json's, else 4)."),
    opset: int | None = typer.Option(None, "--opset", help=OPSET_HELP),
    from_bundle: Path | None = typer.Option(None, "--from", help="Build from an exported artifact or bundle, without torch."),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default: out/<model>-<target>-<scheme>)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the output folder if it exists (only after the new build passed parity)."),
    workspace_mib: int | None = typer.Option(None, "--workspace-mib", help="TensorRT builder workspace limit in MiB (cap it on Orin)."),
    builder_level: int = typer.Option(3, "--builder-level", help="TensorRT builder optimization level 0-5."),
    provider: str = typer.Option("cpu", "--provider", help="ONNX Runtime execution provider for optimizing and checking: cpu, cuda or tensorrt."),
    no_check: bool = typer.Option(False, "--no-check", help="Skip the parity check."),
    prompt: str | None = typer.Option(None, "--prompt", help="Prompt of sample.png (default: the golden prompt and noise)."),
    seed: int = typer.Option(0, "--seed", help="Noise seed of sample.png with --prompt."),
    weight_range_: str = weight_range_option(),
    int8_attention: bool = int8_attention_option(),
    text_weights: str | None = text_weights_option(),
    fuse_attention: bool = typer.Option(False, "--fuse-attention", help="onnxruntime, quantized schemes: rewrite float attention to ORT's "
                                        "MultiHeadAttention (SD1.5-sized W8A8 UNet step 1.12x faster on a 2-core CPU, 0.94x on a 16-core Xeon: measure yours)."),
) -> None:
    """Export (or take --from) an artifact and build it for a target, then check parity and write sample.png."""
    from qsched_export.api import BuildConfig, build as run_build
    from qsched_export.errors import QSchedError
    from runtimes.parity import ParityError

    with user_errors():
        provider_list(provider)
        if from_bundle is None:
            note_default_model(model)
        config = BuildConfig(target=target, bits=bits, model=model, coeffs=coeffs, steps=steps, opset=opset, from_bundle=from_bundle, out=out,
                             overwrite=overwrite, workspace_mib=workspace_mib, builder_level=builder_level, provider=provider, check=not no_check,
                             prompt=prompt, seed=seed, loras=parse_loras(lora), weight_range=weight_range(weight_range_),
                             int8_attention=int8_attention, text_weights=text_weights, fuse_attention=fuse_attention)
        try:
            result = run_build(config, progress_printer())
        except ParityError as exc:
            print_report(exc.report)  # the table, then one line: what failed and what was kept
            # A failed build is discarded with its staging folder (interrupts alone record outcomes).
            raise QSchedError("parity failed (the FAIL rows above); nothing was written", "re-export, or recalibrate the activation ranges; "
                              "--no-check builds without the gate") from None
    if result.parity is not None:
        print_report(result.parity)
    size = sum(p.stat().st_size for p in result.out.rglob("*") if p.is_file())
    console.print(f"wrote {result.image} ({result.runtime}, {result.image_seconds:.2f} s per image); artifact {size / 1e6:.1f} MB in {result.out}",
                  highlight=False)


def bundle(
    target: str = typer.Option("tensorrt", "--target", help="Only tensorrt: engines must be built on the device."),
    bits: int = typer.Option(8, "--bits", help="8 = w8a8, 4 = w4a16 (INT4 weight-only Linear, INT8 Conv), 16 = fp16, 32 = fp32."),
    model: str | None = typer.Option(None, "--model", help="diffusers folder or hub id (default: the embedded sample)."),
    lora: list[str] = lora_option(),
    coeffs: Path | None = typer.Option(None, "--coeffs", help="qsched.json (calibrated first if the scheme is missing)."),
    steps: int | None = typer.Option(None, "--steps", help="Sampler steps (default: the qsched.json's, else 4)."),
    opset: int | None = typer.Option(None, "--opset", help=OPSET_HELP),
    from_artifact: Path | None = typer.Option(None, "--from", help="Bundle an exported artifact instead of exporting."),
    out: Path | None = typer.Option(None, "--out", help="Bundle folder (default: out/<model>-tensorrt-<scheme>-bundle)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the bundle folder if it exists."),
    workspace_mib: int | None = typer.Option(None, "--workspace-mib", help="Workspace in build_engine.sh and the README (default 2048 MiB)."),
    builder_level: int = typer.Option(3, "--builder-level", help="TensorRT builder optimization level 0-5."),
    weight_range_: str = weight_range_option(),
    int8_attention: bool = int8_attention_option(),
    text_weights: str | None = text_weights_option(),
) -> None:
    """Package the TensorRT form (ONNX, manifest, golden data, tokenizers, build_engine.sh, README) to build on a Jetson."""
    from qsched_export.api import BundleConfig, bundle as run_bundle
    from qsched_export.errors import QSchedError

    with user_errors():
        if target != "tensorrt":
            raise QSchedError(f"bundle is for --target tensorrt, got {target}", f"run qsched-export build --target {target}: it needs no device build")
        if from_artifact is None:
            note_default_model(model)
        config = BundleConfig(bits=bits, model=model, coeffs=coeffs, steps=steps, opset=opset, from_artifact=from_artifact, out=out,
                              overwrite=overwrite, workspace_mib=workspace_mib, builder_level=builder_level, loras=parse_loras(lora),
                              weight_range=weight_range(weight_range_), int8_attention=int8_attention, text_weights=text_weights)
        out = run_bundle(config, progress_printer())
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    console.print(f"wrote bundle {out}: {', '.join(files)}", highlight=False)
    console.print(f"copy it to the Jetson, then: qsched-export build --from {out.name} --target tensorrt --bits {bits}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("build")(build)
    app.command("bundle")(bundle)
