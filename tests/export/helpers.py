"""Shared by the export tests: a qsched.json with real activation ranges for a tiny pipeline,
ONNX Runtime runs of an artifact, and error statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SCHEMES = ("fp32", "w8a8", "w4a8", "w4a16")


def write_calibration(model_dir: Path, out: Path, *, steps: int = 4, guidance: float = 2.0, gamma: float | None = None,
                      schemes=SCHEMES, coefficients=None) -> Path:
    """A qsched.json with each scheme's activation ranges observed on two prompts (as calibration
    observes them) and ramp coefficients (or `coefficients`)."""
    from qsched_export.sampler import QSchedCoefficients
    from qsched_export.testing import write_observed_qsched

    return write_observed_qsched(model_dir, out, tuple(schemes), steps=steps, guidance=guidance, gamma=gamma, seed=1,
                                 coefficients=coefficients or QSchedCoefficients.ramp((0.95, 1.0), (1.05, 1.0), steps),
                                 prompts=("a red circle", "two blue squares"))


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
