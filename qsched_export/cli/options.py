"""Options and helpers the torch-side commands share: `--lora`, and the API's progress printer."""

from __future__ import annotations

import typer
from rich.markup import escape

from qsched_export.cli.common import console


def progress_printer():
    """The API's progress callback: each stage as a dim line."""
    return lambda msg: console.print(f"[dim]  {escape(msg)}[/]", highlight=False)


def lora_option():
    return typer.Option([], "--lora", help="PATH_OR_HUB_ID[:SCALE] of a LoRA (LCM-LoRA, TCD, PCM, Hyper-SD) fused into the weights first; repeatable.")


def parse_loras(values: list[str]):
    from qsched_export.lora import parse_lora

    return tuple(parse_lora(v) for v in values)


def weight_range_option():
    return typer.Option("auto", "--weight-range", help="int8 weights: full, 7bit, or auto (full for TensorRT and on CPUs with VNNI/AMX/ARM "
                        "dot products, 7bit for ONNX Runtime on x86 without them, whose kernels saturate full-range weights).")


def int8_attention_option():
    return typer.Option(False, "--int8-attention", help="Also run attention's two matrix products in int8 (static scales; costs quality at "
                        "long sequences: cosine 0.9969 vs 0.9999 on an SD1.5-sized UNet).")


def text_weights_option():
    return typer.Option(None, "--text-weights", help="Text encoders' Linear weights: float (the default), or int8 (per output channel, weight-only: "
                        "DequantizeLinear -> MatMul with float activations, for ONNX Runtime and TensorRT; about 0.26x the float Linear "
                        "bytes, e.g. FLUX's T5).")


def weight_range(value: str) -> str | None:
    from qsched_export.errors import QSchedError

    if value not in ("auto", "full", "7bit"):
        raise QSchedError(f"--weight-range must be auto, full or 7bit, got {value!r}", "pass --weight-range auto")
    return None if value == "auto" else value
