"""`qsched-export export`: a calibrated pipeline -> an artifact folder of static unrolled ONNX graphs."""

from __future__ import annotations

from pathlib import Path

import typer

from qsched_export.cli.common import console, err_console, note_default_model, user_errors
from qsched_export.cli.options import (
    int8_attention_option, lora_option, parse_loras, progress_printer, text_weights_option, weight_range, weight_range_option,
)


def export(
    model: str = typer.Option(None, "--model", "-m", help="Diffusers folder or hub id (default: the embedded sample)."),
    lora: list[str] = lora_option(),
    coeffs: Path = typer.Option(None, "--coeffs", help="qsched.json from calibrate (default: the model folder's own, else out/<model>.qsched.json, else all-ones coefficients)."),
    bits: int = typer.Option(8, "--bits", "-b", help="32, 16, 8 or 4; what 4 means depends on --target (tensorrt: w4a16, onnxruntime: w4a8 MatMulNBits)."),
    scheme: str = typer.Option(None, "--scheme", help="A scheme by name (fp32, fp16, w8a8, w4a8, w4a8s, w8a16, w4a16); overrides --bits."),
    target: str = typer.Option("onnxruntime", "--target", "-t", help="tensorrt or onnxruntime: picks the scheme --bits means."),
    steps: int = typer.Option(4, "--steps", "-n", help="Sampler steps to unroll (must match the qsched.json)."),
    height: int = typer.Option(None, "--height", help="Image height (default: the model's)."),
    width: int = typer.Option(None, "--width", help="Image width (default: the model's)."),
    max_sequence_length: int = typer.Option(None, "--max-sequence-length", help="T5 length of FLUX-class models (default: the model's, at most 512)."),
    batch: int = typer.Option(1, "--batch", help="Static batch size."),
    guidance: float = typer.Option(None, "--guidance", "-g", help="Guidance scale (default: the qsched.json's, else the model's own default, printed with its reason)."),
    gamma: float = typer.Option(None, "--gamma", help="TCD's gamma (default 0.3)."),
    negative_prompt: str = typer.Option("", "--negative-prompt", help="Negative prompt baked into the graph with classifier-free guidance."),
    fuse: bool = typer.Option(False, "--fuse", help="One pipeline.onnx (token ids + noise -> image) instead of three graphs."),
    opset: int = typer.Option(None, "--opset", help="ONNX opset, 17-21 (default 21; 20 for static int8 activations; INT4 needs 21)."),
    out: Path = typer.Option(None, "--out", "-o", help="Artifact folder to create (default: out/<model>-<scheme>-<steps>step)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out folder."),
    prompt: str = typer.Option(None, "--prompt", "-p", help="Prompt of the golden parity data."),
    weight_range_: str = weight_range_option(),
    int8_attention: bool = int8_attention_option(),
    text_weights: str | None = text_weights_option(),
) -> None:
    """Export the few-step sampler as static ONNX graphs with baked Q-Sched coefficients and Q/DQ."""
    with user_errors():
        from qsched_export import outputs
        from qsched_export.api import qsched_candidates
        from qsched_export.export import ExportConfig, export_artifact
        from qsched_export.export.api import DEFAULT_PROMPT
        from qsched_export.quant import scheme_for
        from runtimes.manifest import load_manifest

        # The target decides the Q/DQ placement and the default weight range, by --bits or by name.
        chosen = scheme_for(target, bits, scheme=scheme, weight_range=weight_range(weight_range_), int8_attention=int8_attention,
                            text_weights=text_weights)
        note_default_model(model)
        loras = parse_loras(lora)
        # The same lookup as build, without calibrating: export takes what exists.
        found = next(iter(qsched_candidates(model, coeffs)), None)
        if found is None:
            err_console.print("[yellow]warning:[/] no qsched.json found: exporting with all-ones Q-Sched coefficients (the plain sampler)", highlight=False)
        elif coeffs is None:
            console.print(f"[dim]no --coeffs given: using {found}[/]", highlight=False)
        config = ExportConfig(out=out or outputs.export_dir(model, chosen.folder_tag, steps), model=model, scheme=chosen, coeffs=found, steps=steps,
                              height=height, width=width, batch=batch, guidance_scale=guidance, gamma=gamma, opset=opset, fuse=fuse,
                              overwrite=overwrite, prompt=prompt or DEFAULT_PROMPT, loras=loras, negative_prompt=negative_prompt,
                              text_length=max_sequence_length)
        artifact = export_artifact(config, progress=progress_printer())
        manifest = load_manifest(artifact, verify=False)
        report = manifest.quantization
        sizes = ", ".join(f"{role} {size / 1e6:.2f} MB" for role, size in report["onnx_bytes"].items())
        text = f", text encoders {chosen.text_weights} ({report['text_encoders']['exported_layers']} layers)" if chosen.text_weights != "float" else ""
        console.print(f"wrote {artifact}: {manifest.backbone} {manifest.family} {manifest.steps} steps, guidance {manifest.guidance_scale:g}, "
                      f"scheme {chosen.name} as {manifest.target_form}, opset {manifest.opset}, {report['exported_layers']} quantized layers{text}; "
                      f"{sizes}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(export)
