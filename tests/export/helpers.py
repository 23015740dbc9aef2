"""Shared by the export tests: a qsched.json with real activation ranges for a tiny pipeline,
ONNX Runtime runs of an artifact, and error statistics."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

SCHEMES = ("fp32", "w8a8", "w4a8", "w4a16")


def write_calibration(model_dir: Path, out: Path, *, steps: int = 4, guidance: float = 2.0, gamma: float | None = None,
                      schemes=SCHEMES, coefficients=None) -> Path:
    """Observe each scheme's activation ranges on two prompts (as calibration does) and write a
    qsched.json holding them, with ramp coefficients (or `coefficients`)."""
    from qsched_export.pipeline import UNetDenoiser, denoise_fn, draw_noise, encode_prompts, latent_shape, load_pipeline
    from qsched_export.qsched_file import QSchedFile, SchemeEntry, write_qsched
    from qsched_export.quant import activation_ranges, get_scheme, observe_ranges, quantize_model
    from qsched_export.sampler import QSchedCoefficients, make_plan, sample_loop

    pipe = load_pipeline(str(model_dir))
    plan = make_plan(pipe.scheduler, steps, **({"gamma": gamma} if gamma is not None else {}))
    coefficients = coefficients or QSchedCoefficients.ramp((0.95, 1.0), (1.05, 1.0), steps)
    prompts = ["a red circle", "two blue squares"]
    cond = encode_prompts(pipe, prompts, guidance)
    latents, noises = draw_noise(plan, latent_shape(pipe, 2, None, None), torch.Generator().manual_seed(1))
    entries = {}
    for name in schemes:
        ranges = {}
        if get_scheme(name).static_activations:  # only static int8 activations need observed ranges
            unet = copy.deepcopy(pipe.unet)
            quantize_model(unet, get_scheme(name))
            with torch.no_grad(), observe_ranges(unet):
                sample_loop(denoise_fn(UNetDenoiser(unet, guidance), cond), plan, latents, noises)
            ranges = activation_ranges(unet)
        entries[name] = SchemeEntry(coefficients, activation_ranges=ranges)
    qfile = QSchedFile(model=str(model_dir), family=plan.family, steps=steps, guidance_scale=guidance, schemes=entries)
    write_qsched(out, qfile)
    return out


def run_artifact(artifact: Path) -> dict[str, np.ndarray]:
    """Run the artifact's graphs on ONNX Runtime CPU with the golden inputs."""
    import onnxruntime as ort

    from runtimes.manifest import load_manifest

    manifest = load_manifest(artifact)
    golden = dict(np.load(artifact / manifest.golden))
    feeds = {k: golden[k] for k in ("input_ids", "latents", "noise") if k in golden}

    def run(role, inputs) -> dict[str, np.ndarray]:
        session = ort.InferenceSession(str(artifact / manifest.graph(role).file), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, {i.name: inputs[i.name] for i in session.get_inputs()})))

    if manifest.fused:
        return {**run("pipeline", feeds), "golden": golden}
    context = run("text_encoder", feeds)["context"]
    denoised = run("denoise", {**feeds, "context": context})
    return {"context": context, **denoised, "image": run("vae_decoder", {"latents": denoised["final_latents"]})["image"], "golden": golden}


def error_stats(actual: np.ndarray, expected: np.ndarray) -> dict[str, float]:
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64)).ravel()
    a, b = actual.ravel().astype(np.float64), expected.ravel().astype(np.float64)
    cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return {"max": float(diff.max()), "mean": float(diff.mean()), "p99": float(np.percentile(diff, 99)), "cosine": cosine}
