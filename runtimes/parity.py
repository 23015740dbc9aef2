"""Parity of a built artifact against the PyTorch references stored in its golden file.

The artifact runs on the golden inputs (token ids, initial latent, per-step noise); its latent
after the first step, final latent and image are compared with the PyTorch FP32 outputs and with
the PyTorch fake-quant outputs (the same scales the graph carries). Statistics: max, mean and p99 absolute error,
cosine similarity and PSNR. Thresholds depend on how the scheme is written in the graph
(`manifest.target_form`) and on the reference: tight where the artifact computes the same
thing as the reference, looser against FP32 for quantized graphs, whose distance to FP32 is
the quantization error itself. Every failing comparison is collected, written to
`parity.json`, then raised once as `ParityError`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from runtimes.files import atomic_file
from runtimes.manifest import ArtifactError

PARITY_FILE = "parity.json"
OUTPUTS = ("first_latents", "final_latents", "image")
REFERENCES = ("fp32", "fakequant")
INPUTS = ("input_ids", "latents", "noise")


@dataclass(frozen=True)
class Stats:
    max_abs: float
    mean_abs: float
    p99_abs: float
    cosine: float
    psnr_db: float


def compare(actual: np.ndarray, reference: np.ndarray, peak: float | None = None) -> Stats:
    """Error statistics of `actual` against `reference`.

    PSNR is `10 log10(peak^2 / mse)`, with `peak` the reference's largest magnitude unless
    given (1.0 for images in [0, 1]); identical arrays give `inf`. Cosine of two zero arrays is 1.
    """
    if actual.shape != reference.shape:
        raise ArtifactError(f"output shape {actual.shape} differs from the reference's {reference.shape}", "re-export the artifact")
    a = actual.astype(np.float64).ravel()
    r = reference.astype(np.float64).ravel()
    err = np.abs(a - r)
    norms = np.linalg.norm(a) * np.linalg.norm(r)
    # Clipped: rounding puts the cosine of identical arrays a hair above 1.
    cosine = float(np.clip(a @ r / norms, -1.0, 1.0)) if norms > 0 else float(np.array_equal(a, r))
    mse = float(np.mean(err ** 2))
    peak = float(np.max(np.abs(r))) if peak is None else peak
    psnr = math.inf if mse == 0 else (10 * math.log10(peak ** 2 / mse) if peak > 0 else -math.inf)
    return Stats(float(err.max()), float(err.mean()), float(np.percentile(err, 99)), cosine, psnr)


@dataclass(frozen=True)
class Threshold:
    """Limits one comparison must meet; None = not checked."""

    max_abs: float | None = None
    min_cosine: float | None = None
    min_psnr_db: float | None = None

    def failures(self, stats: Stats) -> list[str]:
        out = []
        if self.max_abs is not None and not stats.max_abs <= self.max_abs:
            out.append(f"max_abs {stats.max_abs:.3g} > {self.max_abs:g}")
        if self.min_cosine is not None and not stats.cosine >= self.min_cosine:
            out.append(f"cosine {stats.cosine:.6f} < {self.min_cosine:g}")
        if self.min_psnr_db is not None and not stats.psnr_db >= self.min_psnr_db:
            out.append(f"psnr {stats.psnr_db:.1f} dB < {self.min_psnr_db:g} dB")
        return out


# (target_form, reference) -> output -> threshold. FP32 graphs must reproduce PyTorch FP32
# to float rounding (the exporter's own bar is 1e-4 on the latent); quantized graphs must
# reproduce the fake-quant reference (same scales); against FP32 they only have to stay
# recognisably the same image (their distance to FP32 is the quantization error itself).
#
# Quantized graphs are held tightly on `first_latents`, loosely on the final latent and image.
# Activation rounding is discontinuous: a float-order difference (ORT's fused int8 kernels
# requantize from int32 accumulators) flips single roundings by one step, and the later sampler
# steps can amplify that into another image. Measured on the embedded sample, w8a8, 4 TCD steps,
# 16 noise seeds, ORT CPU vs fake-quant: first_latents cosine >= 0.99990 for every seed, final
# latent 0.9658 to 0.9992, and PyTorch's own fake-quant in float64 lands as far (0.939) from its
# float32 run. w4a16 (qdq): first >= 0.99998, final >= 0.9962; w4a8 (MatMulNBits): first
# >= 0.9999995, final >= 0.9983. So the first step is the gate, and the final-latent and image
# bounds catch only gross failures. What the gate sees on the sample: all-ones coefficients
# instead of the calibrated ones give first-step cosine 0.9966 (caught); one layer's activation
# scale off by 2x gives 0.99981 (not caught: this model barely feels it, and no bound that
# tolerates rounding flips can).
_FP32 = {"first_latents": Threshold(max_abs=1e-4, min_cosine=0.99999), "final_latents": Threshold(max_abs=1e-4, min_cosine=0.99999),
         "image": Threshold(max_abs=1e-3, min_psnr_db=60)}
THRESHOLDS: dict[tuple[str, str], dict[str, Threshold]] = {
    ("fp32", "fp32"): _FP32,
    ("fp16", "fakequant"): {"first_latents": Threshold(min_cosine=0.9999), "final_latents": Threshold(min_cosine=0.9999),
                            "image": Threshold(min_psnr_db=40)},
    ("fp16", "fp32"): {"first_latents": Threshold(min_cosine=0.999), "final_latents": Threshold(min_cosine=0.999), "image": Threshold(min_psnr_db=35)},
    ("qdq", "fakequant"): {"first_latents": Threshold(min_cosine=0.9995), "final_latents": Threshold(min_cosine=0.95),
                           "image": Threshold(min_psnr_db=20)},
    ("qdq", "fp32"): {"first_latents": Threshold(min_cosine=0.9), "final_latents": Threshold(min_cosine=0.9), "image": Threshold(min_psnr_db=15)},
    ("matmulnbits", "fakequant"): {"first_latents": Threshold(min_cosine=0.9999), "final_latents": Threshold(min_cosine=0.995),
                                   "image": Threshold(min_psnr_db=25)},
    ("matmulnbits", "fp32"): {"first_latents": Threshold(min_cosine=0.9), "final_latents": Threshold(min_cosine=0.9),
                              "image": Threshold(min_psnr_db=15)},
}


@dataclass(frozen=True)
class Comparison:
    output: str
    reference: str
    stats: Stats
    threshold: Threshold
    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class ParityReport:
    runtime: str
    target_form: str
    scheme: str
    comparisons: tuple[Comparison, ...]
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.comparisons)

    @property
    def summary(self) -> str:
        """The closing line, as Polygraphy ends a run."""
        return f"{'PASSED' if self.passed else 'FAILED'} | {self.runtime}"

    def to_dict(self) -> dict:
        return {"passed": self.passed, "runtime": self.runtime, "target_form": self.target_form, "scheme": self.scheme,
                "seconds": self.seconds, **self.extra,
                "comparisons": [{"output": c.output, "reference": c.reference, **{k: _json_float(v) for k, v in asdict(c.stats).items()},
                                 "threshold": asdict(c.threshold), "passed": c.passed, "failures": list(c.failures)} for c in self.comparisons]}


class ParityError(Exception):
    """The artifact's outputs are out of tolerance; `report` holds every comparison."""

    def __init__(self, report: ParityReport):
        self.report = report
        bad = [f"{c.output} vs {c.reference}: {', '.join(c.failures)}" for c in report.comparisons if not c.passed]
        self.problem = f"parity failed on {report.runtime}: " + "; ".join(bad)
        self.fix = "see parity.json; re-export, or recalibrate the activation ranges"
        super().__init__(f"{self.problem} ({self.fix})")


def _json_float(value: float) -> float | str:
    # JSON has no inf: PSNR of identical outputs is written as the string "inf".
    return value if math.isfinite(value) else str(value)


def load_golden(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"golden file {path} is missing", "copy the whole artifact folder, or re-export it")
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def compare_outputs(outputs: dict[str, np.ndarray | None], golden: dict[str, np.ndarray], target_form: str) -> list[Comparison]:
    """Compare each output the artifact produced with each reference the golden file holds."""
    comparisons = []
    for reference in REFERENCES:
        limits = THRESHOLDS.get((target_form, reference))
        if limits is None:
            continue
        for output in OUTPUTS:
            key = f"{reference}/{output}"
            if outputs.get(output) is None or key not in golden:
                continue
            stats = compare(outputs[output], golden[key], peak=1.0 if output == "image" else None)
            threshold = limits[output]
            comparisons.append(Comparison(output, reference, stats, threshold, tuple(threshold.failures(stats))))
    if not comparisons:
        raise ArtifactError(f"the golden file has no reference for a {target_form} artifact (it has: {', '.join(sorted(golden))})",
                            "re-export the artifact")
    return comparisons


def check_artifact(artifact_dir: str | Path, providers: list[str] | tuple[str, ...] = ("cpu",), *, write: bool = True,
                   raise_on_failure: bool = True) -> ParityReport:
    """Run the artifact on its golden inputs and compare; write `parity.json`; raise `ParityError`
    once, listing every failure, unless `raise_on_failure` is False."""
    import time

    from runtimes.pipeline import Text2ImagePipeline

    root = Path(artifact_dir)
    pipe = Text2ImagePipeline(root, providers)
    golden = load_golden(root / pipe.manifest.golden)
    missing = [k for k in pipe.input_names if k not in golden]
    if missing:
        raise ArtifactError(f"golden file lacks the input(s) {', '.join(missing)}", "re-export the artifact")
    start = time.perf_counter()
    out = pipe.run({k: golden[k] for k in pipe.input_names})
    seconds = time.perf_counter() - start
    comparisons = compare_outputs({"first_latents": out.first_latents, "final_latents": out.final_latents, "image": out.image}, golden,
                                  pipe.manifest.target_form)
    report = ParityReport(pipe.description, pipe.manifest.target_form, str(pipe.manifest.scheme.get("name", "?")), tuple(comparisons), seconds)
    if write:
        write_report(root / PARITY_FILE, report)
    if raise_on_failure and not report.passed:
        raise ParityError(report)
    return report


def write_report(path: Path, report: ParityReport) -> None:
    with atomic_file(path) as f:
        json.dump(report.to_dict(), f, indent=2)
        f.write("\n")
