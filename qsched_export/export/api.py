"""`export_artifact(ExportConfig) -> Path`: a calibrated pipeline -> an artifact folder.

The folder holds `text_encoder.onnx` (every tokenizer's ids -> the backbone's conditioning; with
int8 text weights, `Scheme.text_weights`, each Linear as DequantizeLinear(int8) -> MatMul),
`denoise.onnx` (N steps unrolled, constants and Q-Sched coefficients baked in) and
`vae_decoder.onnx` (or one `pipeline.onnx` with `fuse`), `golden.npz`, one folder per tokenizer
and `manifest.json` (runtimes/manifest.py). Everything model-specific goes through the backbone
adapter (qsched_export.backbones). It is written into a temp folder beside `out` and renamed at
the end, so an interrupted or failed export leaves nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qsched_export.errors import QSchedError
from qsched_export.export import onnx_io, symbolics
from qsched_export.export.graphs import DECODER_IO, FusedPipeline, UnrolledDenoise, denoise_io, pipeline_io, text_io
from qsched_export.export.qdq import FORM_FP16, FORM_NBITS, swap_for_export, target_form
from qsched_export.export.tokenizer_files import write_tokenizers
from qsched_export.lora import LoraSpec
from qsched_export.sampler import QSchedCoefficients
from runtimes.manifest import GraphSpec, ImageSpec, Manifest, TensorSpec, write_manifest
from runtimes.schemes import Scheme

DEFAULT_PROMPT = "two small red circles on a blue background"
# Image sides above this are refused before any work: the models we export are trained at 512-2048
# px, and at 4096 px an SDXL UNet's activations alone outgrow a workstation's memory.
MAX_IMAGE_SIDE = 4096


@dataclass(frozen=True)
class ExportConfig:
    """What to export.

    Args:
        out (`Path`): the artifact folder to create.
        model (`str`, optional): diffusers folder or hub id; None = the embedded sample.
        scheme (`str` or `Scheme`): a scheme by name (`qsched_export.quant.SCHEMES`: fp32, fp16, w8a8, w4a8, w4a8s,
            w8a16, w4a16) or a `Scheme` with a target's placement, weight range, int8 attention and text-encoder
            weights (`scheme_for`).
        coeffs (`Path`, optional): qsched.json (coefficients and activation ranges of `scheme`) or a
            bare `{latent_coeff, output_coeff}` file. Quantized schemes with static activations need a qsched.json.
        coefficients (`QSchedCoefficients`, optional): explicit coefficients instead of `coeffs`
            (activation ranges then come from `coeffs` if given). Neither = all ones.
        steps, height, width, batch: the static sampler and shapes (height/width None = the model's).
        guidance_scale (`float`, optional): None = the qsched.json's, else the backbone's default for the model
            (`Backbone.default_guidance`: 1.5 for the embedded sample, 0 for SDXL-Turbo, the pipeline's own otherwise).
        gamma (`float`, optional): TCD's gamma.
        opset (`int`, optional): default-domain opset, 17..21; INT4 schemes need 21. None = `default_opset(scheme)`.
        loras (`tuple[LoraSpec, ...]`): LoRAs fused into the weights before quantization; they must be the
            ones the qsched.json was calibrated with.
        negative_prompt (`str`): the negative prompt baked into the denoise graph with classifier-free guidance.
        text_length (`int`, optional): the T5 length of FLUX-class models (None = the model's).
        fuse (`bool`): one pipeline.onnx instead of three graphs.
        overwrite (`bool`): replace an existing `out`.
        prompt, seed: the golden parity data's prompt (repeated `batch` times) and noise seed.
    """

    out: Path
    model: str | None = None
    scheme: "str | Scheme" = "fp32"
    coeffs: Path | None = None
    coefficients: QSchedCoefficients | None = None
    steps: int = 4
    height: int | None = None
    width: int | None = None
    batch: int = 1
    guidance_scale: float | None = None
    gamma: float | None = None
    opset: int | None = None
    fuse: bool = False
    overwrite: bool = False
    prompt: str = DEFAULT_PROMPT
    seed: int = 0
    loras: tuple[LoraSpec, ...] = ()
    negative_prompt: str = ""
    text_length: int | None = None

    def __post_init__(self):
        from qsched_export.quant import get_scheme

        object.__setattr__(self, "out", Path(self.out))
        scheme = get_scheme(self.scheme)
        if not scheme.exportable:
            raise QSchedError(f"scheme {scheme.name} is a study-only simulation (no ONNX Runtime or TensorRT kernel runs 3-bit "
                              "weights or 6-bit activations)", "export w8a8, w4a8 or w4a16")
        if self.steps < 1:
            raise QSchedError(f"steps must be >= 1, got {self.steps}", "pass --steps 1 or more")
        if self.batch < 1:
            raise QSchedError(f"batch must be >= 1, got {self.batch}", "pass --batch 1 or more")
        if self.opset is None:
            object.__setattr__(self, "opset", onnx_io.default_opset(scheme))
        if not onnx_io.MIN_OPSET <= self.opset <= onnx_io.MAX_OPSET:
            raise QSchedError(f"opset {self.opset} is not supported", f"pass --opset between {onnx_io.MIN_OPSET} and {onnx_io.MAX_OPSET}")
        if scheme.block_weights and self.opset < onnx_io.INT4_MIN_OPSET:
            raise QSchedError(f"scheme {scheme.name} needs opset {onnx_io.INT4_MIN_OPSET} (INT4 block quantization), got --opset {self.opset}",
                              f"pass --opset {onnx_io.INT4_MIN_OPSET}, or --bits 8 for an older opset")
        if self.guidance_scale is not None and not (0 <= self.guidance_scale < float("inf")):
            raise QSchedError(f"guidance must be a finite number >= 0, got {self.guidance_scale}", "pass e.g. --guidance 1.5, or leave it out for the model's default")
        for side in ("height", "width"):
            value = getattr(self, side)
            if value is not None and not 0 < value <= MAX_IMAGE_SIDE:
                raise QSchedError(f"--{side} must be between 1 and {MAX_IMAGE_SIDE} pixels, got {value}", f"pass --{side} 512, or leave it out for the model's size")
        if self.seed < 0:
            raise QSchedError(f"seed must be >= 0, got {self.seed}", "pass --seed 0 or another non-negative integer")
        if self.coefficients is not None:
            self.coefficients.check_steps(self.steps)
        from runtimes.files import check_output_folder

        check_output_folder(self.out, self.overwrite)  # before any work: an output that cannot be written safely is refused now
        if not self.prompt.strip():
            raise QSchedError("the golden prompt is empty", "pass a non-empty prompt")


@dataclass(frozen=True)
class _Calibration:
    coefficients: QSchedCoefficients | None  # None: all ones
    guidance_scale: float | None  # None: the backbone's default
    activation_ranges: dict
    source: object = None  # the QSchedFile, to check against the loaded model


def _read_calibration(config: ExportConfig, scheme) -> _Calibration:
    """Coefficients, guidance and activation ranges for `scheme` from `config.coeffs` (read before
    the model loads: the guidance is a setting of the backbone)."""
    from qsched_export.qsched_file import QSchedFile, read_coefficient_file

    if config.coeffs is None:
        if scheme.static_activations:
            raise QSchedError(f"scheme {scheme.name} needs calibrated activation ranges", "pass --coeffs qsched.json from qsched-export calibrate")
        return _Calibration(config.coefficients, config.guidance_scale, {})
    source = read_coefficient_file(config.coeffs)
    if not isinstance(source, QSchedFile):
        if scheme.static_activations:
            raise QSchedError(f"scheme {scheme.name} needs calibrated activation ranges, and {config.coeffs} holds coefficients only",
                              "pass --coeffs qsched.json from qsched-export calibrate")
        return _Calibration(config.coefficients or source.check_steps(config.steps), config.guidance_scale, {})
    if source.steps != config.steps:
        raise QSchedError(f"{config.coeffs} was calibrated for {source.steps} steps, not {config.steps}",
                          f"pass --steps {source.steps}, or calibrate for --steps {config.steps}")
    # fp16 runs the fp32 network at half precision: without its own entry it takes fp32's coefficients.
    name = "fp32" if scheme.name not in source.schemes and not scheme.quantized and "fp32" in source.schemes else scheme.name
    if scheme.name == "fp32" and name not in source.schemes:
        # fp32 has nothing to calibrate: it exports the plain sampler (coefficients 1) at the calibrated guidance.
        return _Calibration(config.coefficients, config.guidance_scale if config.guidance_scale is not None else source.guidance_scale, {}, source)
    entry = source.scheme(name)  # names the calibrated schemes when missing
    guidance = source.guidance_scale if config.guidance_scale is None else config.guidance_scale
    return _Calibration(config.coefficients or entry.coefficients.check_steps(config.steps), guidance, entry.activation_ranges, source)


def _check_against(calib: _Calibration, config: ExportConfig, backbone, plan) -> None:
    """Refuse coefficients calibrated for another model, sampler, guidance or LoRA."""
    if calib.source is None:
        return
    mismatch = calib.source.mismatches(model=backbone.source.id, plan=plan.to_dict(), guidance_scale=backbone.guidance.scale,
                                       loras=tuple(x.to_dict() for x in backbone.source.loras))
    if mismatch:
        raise QSchedError(f"{config.coeffs} was calibrated for another setting ({'; '.join(mismatch)})",
                          "calibrate for this setting, or pass the options it was calibrated with")


def export_artifact(config: ExportConfig, progress: Callable[[str], None] | None = None) -> Path:
    """Export and return the artifact folder. `progress` is told each stage as it starts."""
    from runtimes.files import staged_dir

    with staged_dir(config.out, config.overwrite) as staging:
        _export_into(config, staging, progress or (lambda _msg: None))
    return config.out


def _export_into(config: ExportConfig, folder: Path, note: Callable[[str], None]) -> None:
    from qsched_export.pipeline import draw_noise, open_backbone
    from qsched_export.quant import get_scheme, set_activation_ranges

    scheme = get_scheme(config.scheme)
    form = target_form(scheme)
    calib = _read_calibration(config, scheme)
    note(f"loading {config.model or 'the embedded sample'}")
    backbone = open_backbone(config.model, loras=config.loras, guidance=calib.guidance_scale, height=config.height, width=config.width,
                             negative_prompt=config.negative_prompt, text_length=config.text_length)
    plan = backbone.plan(config.steps, **({"gamma": config.gamma} if config.gamma is not None else {}))
    _check_against(calib, config, backbone, plan)
    coeffs = calib.coefficients or QSchedCoefficients.ones(plan.num_steps)
    coeffs.check_steps(plan.num_steps)
    num_cond = len(backbone.COND_NAMES)

    # 1. golden inputs: the prompts' ids and conditioning, the noise a seed draws. The conditioning
    # comes from the text module that is exported (int8 text weights fake-quantized as the graph
    # dequantizes them), so every reference below starts where the runtime's text graph leaves off.
    prompts = [config.prompt] * config.batch
    ids = backbone.token_ids(prompts)
    text, text_report = backbone.scheme_text_module(scheme)
    cond = backbone.encode(prompts, text=text)
    shape = backbone.latent_shape(config.batch)
    latents, noises = draw_noise(plan, shape, torch.Generator().manual_seed(config.seed))
    noise = torch.stack([n for n in noises if n is not None]) if plan.stochastic else None
    draws = (latents,) + ((noise,) if noise is not None else ())
    golden = {**{k: v.numpy() for k, v in ids.items()}, **{k: v.numpy() for k, v in cond.tensors.items()}, "latents": latents.numpy()}
    if noise is not None:
        golden["noise"] = noise.numpy()

    # 2. the PyTorch references, from the very module that is exported, run eagerly: FP32, and the
    # scheme's own numerics (fake-quant / fp16)
    note("running the PyTorch references")

    def reference(name: str, denoise: UnrolledDenoise) -> None:
        with torch.no_grad():
            final, first = denoise(*cond.tensors.values(), *draws)
        golden.update({f"{name}/final_latents": final.numpy(), f"{name}/first_latents": first.numpy(),
                       f"{name}/image": backbone.decode(final).numpy()})

    note(backbone.describe())
    reference("fp32", UnrolledDenoise(backbone.denoiser(), plan, coeffs, num_cond))
    # Converted in place: nothing needs the float model after its reference, and a copy of FLUX.1's
    # 12 B transformer is 24 GiB more in FP16, 47 GiB in FP32 (docs/FLUX_12B_PLAN.md).
    model, report = backbone.scheme_model(scheme, backbone.model)
    if scheme.static_activations:
        set_activation_ranges(model, calib.activation_ranges)
    denoise = UnrolledDenoise(backbone.denoiser(model), plan, coeffs, num_cond).eval()
    if scheme.quantized or form == FORM_FP16:
        reference("fakequant", denoise)
    exported_layers = swap_for_export(model, form)  # in place: `denoise` now holds the export layers
    text_layers = swap_for_export(text, target_form(scheme.text_scheme))

    # 3. the graphs
    symbolics.register()
    id_args = tuple(ids[r.input_name] for r in backbone.tokenizer_roles())
    decoder = backbone.decoder_module()
    jobs = ([("pipeline", FusedPipeline(text, denoise, decoder, len(id_args)), id_args + draws, pipeline_io(backbone, plan))]
            if config.fuse else
            [("text_encoder", text, id_args, text_io(backbone)),
             ("denoise", denoise, (*cond.tensors.values(), *draws), denoise_io(backbone, plan)),
             ("vae_decoder", decoder, (latents,), DECODER_IO)])
    graphs: dict[str, GraphSpec] = {}
    timings: dict[str, float] = {}
    onnx_bytes: dict[str, int] = {}
    for role, module, args, (in_names, out_names) in jobs:
        note(f"exporting {role}.onnx")
        start = time.perf_counter()
        path = folder / f"{role}.onnx"
        uses_nbits = form == FORM_NBITS and role in ("denoise", "pipeline")  # only the backbone model holds MatMulNBits
        exported = onnx_io.export_module(module.eval(), args, path, in_names, out_names, config.opset, microsoft_ops=uses_nbits)
        onnx_io.pack_int4_weights(exported)
        onnx_io.save_model(exported, path)
        del exported  # the weights live on disk now; an SD-sized graph is GBs in memory
        timings[role] = round(time.perf_counter() - start, 3)
        onnx_io.check_model(path)
        inputs, outputs = onnx_io.io_specs(path)
        graphs[role] = GraphSpec(path.name, {k: TensorSpec(*v) for k, v in inputs.items()}, {k: TensorSpec(*v) for k, v in outputs.items()})
        onnx_bytes[role] = sum(p.stat().st_size for p in folder.glob(f"{role}.onnx*"))

    # 4. tokenizers, golden data, manifest (last: it hashes every other file)
    note("writing tokenizers, golden data and manifest")
    tokenizers = write_tokenizers(backbone, folder, prompts)
    np.savez(folder / "golden.npz", **golden)
    manifest = Manifest(
        tools=_tool_versions(), model={"id": backbone.source.id, "pipeline_class": type(backbone.pipe).__name__, "backbone": backbone.NAME,
                                      "family": plan.family},
        sampler=plan.to_dict(), steps=plan.num_steps, guidance_scale=backbone.guidance.scale, do_cfg=backbone.do_cfg,
        negative_prompt=config.negative_prompt, scheme=scheme.to_dict(), target_form=form, coefficients=coeffs.to_dict(),
        image=ImageSpec(backbone.height, backbone.width, config.batch), latent_shape=shape, opset=config.opset, graphs=graphs,
        tokenizers=tokenizers, loras=tuple(x.to_dict() for x in backbone.source.loras),
        quantization={**report.to_dict(), "exported_layers": exported_layers, "onnx_bytes": onnx_bytes, "export_seconds": timings,
                      "text_encoders": {**text_report.to_dict(), "exported_layers": text_layers}},
    )
    write_manifest(folder, manifest)


def _tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    from qsched_export import __version__

    versions = {"qsched_export": __version__}
    for dist in ("torch", "diffusers", "transformers", "onnx", "onnxruntime"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = "absent"
    return versions
