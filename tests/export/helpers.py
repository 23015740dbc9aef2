"""Shared by the export tests: a qsched.json with real activation ranges for a tiny pipeline,
ONNX Runtime runs of an artifact, and error statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

SCHEMES = ("fp32", "w8a8", "w4a8", "w4a16")


def write_calibration(model_dir: Path, out: Path, *, steps: int = 4, guidance: float = 2.0, gamma: float | None = None,
                      schemes=SCHEMES, coefficients=None) -> Path:
    """Observe each scheme's activation ranges on two prompts (as calibration does) and write a
    qsched.json holding them, with ramp coefficients (or `coefficients`)."""
    from qsched_export.pipeline import denoise_fn, draw_noise, open_backbone
    from qsched_export.qsched_file import QSchedFile, SchemeEntry, write_qsched
    from qsched_export.quant import activation_ranges, get_scheme, observe_ranges
    from qsched_export.sampler import QSchedCoefficients, sample_loop

    backbone = open_backbone(str(model_dir), guidance=guidance)
    plan = backbone.plan(steps, **({"gamma": gamma} if gamma is not None else {}))
    coefficients = coefficients or QSchedCoefficients.ramp((0.95, 1.0), (1.05, 1.0), steps)
    prompts = ["a red circle", "two blue squares"]
    cond = backbone.encode(prompts)
    latents, noises = draw_noise(plan, backbone.latent_shape(2), torch.Generator().manual_seed(1))
    entries = {}
    for name in schemes:
        ranges = {}
        if get_scheme(name).static_activations:  # only static int8 activations need observed ranges
            model, _ = backbone.scheme_model(name)
            with torch.no_grad(), observe_ranges(model):
                sample_loop(denoise_fn(backbone.denoiser(model), cond), plan, latents, noises)
            ranges = activation_ranges(model)
        entries[name] = SchemeEntry(coefficients, activation_ranges=ranges)
    qfile = QSchedFile(model=str(model_dir), family=plan.family, steps=steps, guidance_scale=guidance, schemes=entries, sampler_plan=plan.to_dict())
    write_qsched(out, qfile)
    return out


def run_artifact(artifact: Path) -> dict[str, np.ndarray]:
    """Run the artifact's graphs on ONNX Runtime CPU with the golden inputs, in manifest order,
    each fed by name (what runtimes/pipeline.py does, written out with plain sessions)."""
    import onnxruntime as ort

    from runtimes.manifest import load_manifest

    manifest = load_manifest(artifact)
    golden = dict(np.load(artifact / manifest.golden))
    pool = {k: v for k, v in golden.items() if "/" not in k}
    produced: dict[str, np.ndarray] = {}
    for spec in manifest.graphs.values():
        session = ort.InferenceSession(str(artifact / spec.file), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        feeds = {i.name: produced.get(i.name, pool.get(i.name)) for i in session.get_inputs()}
        produced.update(zip(names, session.run(names, feeds)))
    return {**produced, "golden": golden}


def error_stats(actual: np.ndarray, expected: np.ndarray) -> dict[str, float]:
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64)).ravel()
    a, b = actual.ravel().astype(np.float64), expected.ravel().astype(np.float64)
    cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return {"max": float(diff.max()), "mean": float(diff.mean()), "p99": float(np.percentile(diff, 99)), "cosine": cosine}
