"""`export_artifact(ExportConfig) -> Path`: a calibrated pipeline -> an artifact folder.

The folder holds `text_encoder.onnx`, `denoise.onnx` (N steps unrolled, constants and Q-Sched
coefficients baked in), `vae_decoder.onnx` (or one `pipeline.onnx` with `fuse`), `golden.npz`,
`tokenizer/tokenizer.json` and `manifest.json` (runtimes/manifest.py). It is written into a temp
folder beside `out` and renamed at the end, so an interrupted or failed export leaves nothing.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qsched_export.errors import QSchedError
from qsched_export.export import onnx_io
from qsched_export.export.graphs import (
    TEXT_ENCODER_IO, VAE_DECODER_IO, FusedPipeline, HalfPrecision, TextEncoder, UnrolledDenoise, VaeDecoder, denoise_io, pipeline_io,
)
from qsched_export.export.qdq import FORM_FP16, FORM_NBITS, swap_for_export, target_form
from qsched_export.export.tokenizer_files import pipeline_token_ids, write_tokenizer
from qsched_export.sampler import QSchedCoefficients
from runtimes.manifest import GraphSpec, ImageSpec, Manifest, TensorSpec, write_manifest

DEFAULT_PROMPT = "two small red circles on a blue background"


@dataclass(frozen=True)
class ExportConfig:
    """What to export.

    Args:
        out (`Path`): the artifact folder to create.
        model (`str`, optional): diffusers folder or hub id; None = the embedded sample.
        scheme (`str`): fp32, fp16, w8a8, w4a8, w8a16 or w4a16 (`qsched_export.quant.SCHEMES`).
        coeffs (`Path`, optional): qsched.json (coefficients and activation ranges of `scheme`) or a
            bare `{latent_coeff, output_coeff}` file. Quantized schemes with static activations need a qsched.json.
        coefficients (`QSchedCoefficients`, optional): explicit coefficients instead of `coeffs`
            (activation ranges then come from `coeffs` if given). Neither = all ones.
        steps, height, width, batch: the static sampler and shapes (height/width None = the model's).
        guidance_scale (`float`, optional): None = the qsched.json's, else `default_guidance(model)` (1.5 for the embedded sample, 7.5 otherwise).
        gamma (`float`, optional): TCD's gamma.
        opset (`int`, optional): default-domain opset, 17..21; INT4 schemes need 21. None = `default_opset(scheme)`.
        fuse (`bool`): one pipeline.onnx instead of three graphs.
        overwrite (`bool`): replace an existing `out`.
        prompt, seed: the golden parity data's prompt (repeated `batch` times) and noise seed.
    """

    out: Path
    model: str | None = None
    scheme: str = "fp32"
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
        if self.guidance_scale is not None and self.guidance_scale < 0:
            raise QSchedError(f"guidance_scale must be >= 0, got {self.guidance_scale}", "pass --guidance 0 or more")
        if self.coefficients is not None:
            self.coefficients.check_steps(self.steps)
        if self.out.exists() and not self.overwrite:
            raise QSchedError(f"output folder {self.out} already exists", "pass --overwrite to replace it, or another --out")
        if not self.prompt.strip():
            raise QSchedError("the golden prompt is empty", "pass a non-empty prompt")


@dataclass(frozen=True)
class _Calibration:
    coefficients: QSchedCoefficients
    guidance_scale: float
    activation_ranges: dict


def _read_calibration(config: ExportConfig, scheme, family: str, model_id: str) -> _Calibration:
    """Coefficients, guidance and activation ranges for `scheme`, checked against the model and steps."""
    from qsched_export.pipeline import default_guidance
    from qsched_export.qsched_file import QSchedFile, read_coefficient_file

    ranges: dict = {}
    guidance = config.guidance_scale
    coefficients = config.coefficients
    if config.coeffs is not None:
        source = read_coefficient_file(config.coeffs)
        if isinstance(source, QSchedFile):
            if source.steps != config.steps:
                raise QSchedError(f"{config.coeffs} was calibrated for {source.steps} steps, not {config.steps}",
                                  f"pass --steps {source.steps}, or calibrate for --steps {config.steps}")
            if source.family != family:
                raise QSchedError(f"{config.coeffs} was calibrated for the {source.family} sampler, this model uses {family}",
                                  "pass the qsched.json calibrated for this model")
            if Path(str(source.model)).name != Path(model_id).name:
                raise QSchedError(f"{config.coeffs} was calibrated for model {source.model}, not {model_id}",
                                  "pass the qsched.json calibrated for this model")
            # fp16 runs the fp32 network at half precision: without its own entry it takes fp32's coefficients.
            name = "fp32" if scheme.name not in source.schemes and not scheme.quantized and "fp32" in source.schemes else scheme.name
            entry = source.scheme(name)  # names the calibrated schemes when missing
            ranges = entry.activation_ranges
            coefficients = coefficients or entry.coefficients.check_steps(config.steps)
            guidance = source.guidance_scale if guidance is None else guidance
        else:
            coefficients = coefficients or source.check_steps(config.steps)
    if scheme.static_activations and not ranges:
        raise QSchedError(f"scheme {scheme.name} needs calibrated activation ranges", "pass --coeffs qsched.json from qsched-export calibrate")
    return _Calibration(coefficients or QSchedCoefficients.ones(config.steps),
                        default_guidance(config.model) if guidance is None else float(guidance), ranges)


def export_artifact(config: ExportConfig, progress: Callable[[str], None] | None = None) -> Path:
    """Export and return the artifact folder. `progress` is told each stage as it starts."""
    note = progress or (lambda _msg: None)
    out = config.out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _export_into(config, tmp, note)
        tmp.chmod(0o755)  # mkdtemp makes it private; the artifact is meant to be copied and shared
        _replace_folder(tmp, out, config.overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _replace_folder(tmp: Path, out: Path, overwrite: bool) -> None:
    if out.exists():
        if not overwrite:
            raise QSchedError(f"output folder {out} already exists", "pass --overwrite to replace it, or another --out")
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, trash / out.name)
        os.replace(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _export_into(config: ExportConfig, folder: Path, note: Callable[[str], None]) -> None:
    from qsched_export.pipeline import (
        SAMPLE_MODEL, UNetDenoiser, decode_latents, draw_noise, encode_prompts, latent_shape, load_pipeline,
    )
    from qsched_export.quant import get_scheme, quantize_model, set_activation_ranges
    from qsched_export.sampler import make_plan

    scheme = get_scheme(config.scheme)
    form = target_form(scheme)
    note(f"loading {config.model or 'the embedded sample'}")
    pipe = load_pipeline(config.model)
    model_id = config.model or f"samples/{SAMPLE_MODEL.name}"
    plan = make_plan(pipe.scheduler, config.steps, **({"gamma": config.gamma} if config.gamma is not None else {}))
    calib = _read_calibration(config, scheme, plan.family, model_id)
    coeffs = calib.coefficients

    # 1. golden inputs: the prompts, their ids and conditioning, the noise a seed draws
    prompts = [config.prompt] * config.batch
    cond = encode_prompts(pipe, prompts, calib.guidance_scale)
    do_cfg = UNetDenoiser(pipe.unet, calib.guidance_scale).do_cfg
    negative = ""
    texts = [negative] * config.batch + prompts if do_cfg else prompts
    input_ids = pipeline_token_ids(pipe, texts)
    shape = latent_shape(pipe, config.batch, config.height, config.width)
    latents, noises = draw_noise(plan, shape, torch.Generator().manual_seed(config.seed))
    noise = torch.stack([n for n in noises if n is not None]) if plan.stochastic else None

    # 2. the PyTorch references, from the very module that is exported, run eagerly: FP32, and the
    # scheme's own numerics (fake-quant / fp16)
    note("running the PyTorch references")
    golden = {"input_ids": input_ids.numpy(), "context": cond.context.numpy(), "latents": latents.numpy()}
    draws = (latents,) + ((noise,) if noise is not None else ())
    if noise is not None:
        golden["noise"] = noise.numpy()

    def reference(name: str, denoise: UnrolledDenoise) -> None:
        with torch.no_grad():
            final, first = denoise(cond.context, *draws)
            golden.update({f"{name}/final_latents": final.numpy(), f"{name}/first_latents": first.numpy(),
                           f"{name}/image": decode_latents(pipe, final).numpy()})

    reference("fp32", UnrolledDenoise(UNetDenoiser(pipe.unet, calib.guidance_scale), plan, coeffs, cond.timestep_cond))
    # The scheme's model is a copy (fp16 and quantized ones change it); fp32 exports the pipeline's own UNet.
    unet = copy.deepcopy(pipe.unet) if scheme.quantized or form == FORM_FP16 else pipe.unet
    report = quantize_model(unet, scheme)
    if scheme.static_activations:
        set_activation_ranges(unet, calib.activation_ranges)
    denoiser: torch.nn.Module = UNetDenoiser(unet, calib.guidance_scale)
    if form == FORM_FP16:
        denoiser = HalfPrecision(denoiser)
    denoise = UnrolledDenoise(denoiser, plan, coeffs, cond.timestep_cond).eval()
    if scheme.quantized or form == FORM_FP16:
        reference("fakequant", denoise)
    exported_layers = swap_for_export(unet, form)  # in place: `denoise` now holds the export layers

    # 3. the graphs
    jobs = ([("pipeline", FusedPipeline(TextEncoder(pipe.text_encoder), denoise, VaeDecoder(pipe.vae)), (input_ids, *draws), pipeline_io(plan))]
            if config.fuse else
            [("text_encoder", TextEncoder(pipe.text_encoder), (input_ids,), TEXT_ENCODER_IO),
             ("denoise", denoise, (cond.context, *draws), denoise_io(plan)),
             ("vae_decoder", VaeDecoder(pipe.vae), (latents,), VAE_DECODER_IO)])
    graphs: dict[str, GraphSpec] = {}
    timings: dict[str, float] = {}
    onnx_bytes: dict[str, int] = {}
    for role, module, args, (in_names, out_names) in jobs:
        note(f"exporting {role}.onnx")
        start = time.perf_counter()
        path = folder / f"{role}.onnx"
        uses_nbits = form == FORM_NBITS and role in ("denoise", "pipeline")  # only the UNet holds MatMulNBits
        model = onnx_io.export_module(module.eval(), args, path, in_names, out_names, config.opset, microsoft_ops=uses_nbits)
        onnx_io.pack_int4_weights(model)
        onnx_io.save_model(model, path)
        del model  # the weights live on disk now; an SD-sized graph is GBs in memory
        timings[role] = round(time.perf_counter() - start, 3)
        onnx_io.check_model(path)
        inputs, outputs = onnx_io.io_specs(path)
        graphs[role] = GraphSpec(path.name, {k: TensorSpec(*v) for k, v in inputs.items()}, {k: TensorSpec(*v) for k, v in outputs.items()})
        onnx_bytes[role] = sum(p.stat().st_size for p in folder.glob(f"{role}.onnx*"))

    # 4. tokenizer, golden data, manifest (last: it hashes every other file)
    note("writing tokenizer, golden data and manifest")
    tokenizer = write_tokenizer(pipe, folder, texts)
    np.savez(folder / "golden.npz", **golden)
    manifest = Manifest(
        tools=_tool_versions(), model={"id": model_id, "pipeline_class": type(pipe).__name__, "family": plan.family},
        sampler=plan.to_dict(), steps=plan.num_steps, guidance_scale=calib.guidance_scale, do_cfg=do_cfg, negative_prompt=negative,
        scheme=scheme.to_dict(), target_form=form, coefficients=coeffs.to_dict(),
        image=ImageSpec(shape[2] * pipe.vae_scale_factor, shape[3] * pipe.vae_scale_factor, config.batch), latent_shape=shape,
        opset=config.opset, graphs=graphs, tokenizer=tokenizer,
        quantization={**report.to_dict(), "exported_layers": exported_layers, "onnx_bytes": onnx_bytes, "export_seconds": timings},
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
