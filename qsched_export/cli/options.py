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
