"""Backbone adapters: one module per diffusers pipeline family, registered by pipeline class (the
way diffusers maps scheduler classes and Optimum registers its OnnxConfigs). A model is a sampler
family (qsched_export.sampler) times a backbone family: SDXL-Turbo = euler_a x sdxl,
FLUX.1-schnell = flow_euler x flux, LCM-LoRA on SD1.5 = lcm x sd with a fused LoRA.

Adding a backbone touches only its module and `BACKBONES`.
"""

from __future__ import annotations

from qsched_export.backbones.base import Backbone, Conditioning, Guidance, HalfPrecision, ModelSource, TokenizerRole
from qsched_export.backbones.flux import FluxBackbone
from qsched_export.backbones.sd import SDBackbone
from qsched_export.backbones.sdxl import SDXLBackbone
from qsched_export.errors import QSchedError

BACKBONES: dict[str, type[Backbone]] = {b.NAME: b for b in (SDBackbone, SDXLBackbone, FluxBackbone)}
PIPELINE_TO_BACKBONE: dict[str, type[Backbone]] = {cls: b for b in BACKBONES.values() for cls in b.PIPELINE_CLASSES}

__all__ = ["BACKBONES", "PIPELINE_TO_BACKBONE", "Backbone", "Conditioning", "Guidance", "HalfPrecision", "ModelSource", "TokenizerRole",
           "backbone_class"]


def backbone_class(pipeline_class: str) -> type[Backbone]:
    """The adapter for a diffusers pipeline class name; an unsupported class names the supported ones."""
    if pipeline_class not in PIPELINE_TO_BACKBONE:
        raise QSchedError(f"pipeline class {pipeline_class} is not supported",
                          f"use a pipeline of one of: {', '.join(sorted(PIPELINE_TO_BACKBONE))}")
    return PIPELINE_TO_BACKBONE[pipeline_class]
