"""What the parity gate must tell apart, measured: the latent after step 1 of an exported artifact,
as relative L2 error against the PyTorch fake-quant reference, for

- the artifact on ONNX Runtime (fused int8 kernels) and as written (ORT_DISABLE_ALL);
- the fake-quant reference with a known share of activation roundings flipped (1e-4 .. 1e-2):
  what float-order differences between runtimes do, in a controlled amount;
- faults the gate must catch: all-ones Q-Sched coefficients instead of the calibrated ones,
  one layer's activation scale 2x off, and FP32 (no quantization at all).

    python benchmarks/parity_gate.py --out benchmarks/results/parity_gate.json            # embedded sample
    python benchmarks/parity_gate.py --tiny --out parity_gate_tiny.json                  # the tests' tiny UNet
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.results_json import write_results  # noqa: E402

FLIP_SHARES = (1e-4, 1e-3, 1e-2)


def rel_err(a: np.ndarray, ref: np.ndarray) -> float:
    """|a - ref| / |ref|, the quantity the parity gate bounds (runtimes.parity.compare)."""
    from runtimes.parity import compare

    return compare(a, ref).rel_err


def _tiny_model(work: Path) -> tuple[str, Path, float | None]:
    from qsched_export.sampler import QSchedCoefficients
    from qsched_export.testing import save_tiny_sd, write_observed_qsched

    model = save_tiny_sd(work / "pipe", scheduler_cls="TCDScheduler")
    qsched = write_observed_qsched(model, work / "qsched.json", ("w8a8",), steps=2, guidance=2.0, gamma=0.3, seed=1,
                                   prompts=("a red circle", "two blue squares"), coefficients=QSchedCoefficients.ramp((0.95, 1.0), (1.05, 1.0), 2))
    return str(model), qsched, 0.3


def measure(model: str | None, qsched: Path, gamma: float | None, scheme, work: Path) -> dict:
    import onnxruntime as ort

    from qsched_export.export import ExportConfig, export_artifact
    from qsched_export.export.graphs import UnrolledDenoise
    from qsched_export.pipeline import open_backbone
    from qsched_export.qsched_file import read_qsched
    from qsched_export.quant import numerics, quant_layers, set_activation_ranges
    from qsched_export.sampler import QSchedCoefficients
    from runtimes.manifest import load_manifest

    qfile = read_qsched(qsched)
    steps = qfile.steps
    artifact = export_artifact(ExportConfig(out=work / "artifact", model=model, scheme=scheme, coeffs=qsched, steps=steps, gamma=gamma))
    manifest = load_manifest(artifact)
    golden = dict(np.load(artifact / "golden.npz"))
    fq, fp32 = golden["fakequant/first_latents"], golden["fp32/first_latents"]

    def run_ort(level) -> dict[str, np.ndarray]:
        """first_latents and final_latents of one run of the denoise graph."""
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = level
        s = ort.InferenceSession(str(artifact / "denoise.onnx"), opts, providers=["CPUExecutionProvider"])
        names = ["first_latents", "final_latents"]
        return dict(zip(names, s.run(names, {i.name: golden[i.name] for i in s.get_inputs()})))

    # The fake-quant denoiser as the exporter builds it, to re-run it under faults.
    backbone = open_backbone(model, guidance=qfile.guidance_scale)
    plan = backbone.plan(steps, **({"gamma": gamma} if gamma is not None else {}))
    entry = qfile.scheme(scheme.name)
    cond = tuple(torch.from_numpy(golden[name]) for name in backbone.COND_NAMES)
    draws = (torch.from_numpy(golden["latents"]),) + ((torch.from_numpy(golden["noise"]),) if "noise" in golden else ())

    def first_latents(coeffs: QSchedCoefficients, edit=None, flip: float = 0.0) -> np.ndarray:
        unet, _ = backbone.scheme_model(scheme)
        set_activation_ranges(unet, entry.activation_ranges)
        if edit is not None:
            edit(unet)
        denoise = UnrolledDenoise(backbone.denoiser(unet), plan, coeffs, len(cond)).eval()
        with torch.no_grad(), numerics.flipped_roundings(flip):
            return denoise(*cond, *draws)[1].numpy()

    calibrated = entry.coefficients
    ours = first_latents(calibrated)
    assert np.array_equal(ours, fq), "the re-built fake-quant denoiser must reproduce the golden reference exactly"

    def double_one_scale(unet) -> None:
        layers = [l for l in quant_layers(unet).values() if l.needs_ranges()]
        layer = layers[len(layers) // 2]  # a mid-network layer
        layer.input_scale.mul_(2)

    fused_run = run_ort(ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    fused = fused_run["first_latents"]
    flipped = {share: first_latents(calibrated, flip=share) for share in FLIP_SHARES}
    faults = {"all_ones_coefficients": first_latents(QSchedCoefficients.ones(steps)), "one_scale_2x": first_latents(calibrated, edit=double_one_scale)}
    rows = {
        "ort_fused": rel_err(fused, fq),
        "ort_as_written": rel_err(run_ort(ort.GraphOptimizationLevel.ORT_DISABLE_ALL)["first_latents"], fq),
        **{f"flip_{share:g}": rel_err(v, fq) for share, v in flipped.items()},
        **{f"fault_{name}": rel_err(v, fq) for name, v in faults.items()},
        "fp32_vs_fakequant": rel_err(fp32, fq),
    }
    vs_fp32 = {"ort_fused": rel_err(fused, fp32), "fakequant": rel_err(fq, fp32), **{f"flip_{s:g}": rel_err(v, fp32) for s, v in flipped.items()},
               **{f"fault_{name}": rel_err(v, fp32) for name, v in faults.items()}}
    final = {"ort_fused_vs_fakequant": rel_err(fused_run["final_latents"], golden["fakequant/final_latents"]),
             "fakequant_vs_fp32": rel_err(golden["fakequant/final_latents"], golden["fp32/final_latents"])}
    return {"scheme": manifest.scheme, "coefficients": calibrated.to_dict(), "rel_err_first_latents_vs_fakequant": rows,
            "rel_err_first_latents_vs_fp32": vs_fp32, "rel_err_final_latents": final}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny TCD UNet (random weights) instead of the embedded sample")
    parser.add_argument("--weight-range", default="full", choices=("full", "7bit"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import onnxruntime

    from qsched_export.quant import get_scheme
    from runtimes import cpu

    scheme = get_scheme("w8a8").with_weight_range(args.weight_range)
    with tempfile.TemporaryDirectory(prefix="parity-gate-") as tmp:
        work = Path(tmp)
        if args.tiny:
            model, qsched, gamma = _tiny_model(work)
        else:
            from qsched_export.pipeline import SAMPLE_MODEL

            model, qsched, gamma = None, SAMPLE_MODEL / "qsched.json", None
        result = measure(model, qsched, gamma, scheme, work)
    result |= {"model": "tiny" if args.tiny else "sample", "cpu": cpu.probe().to_dict(), "onnxruntime": onnxruntime.__version__,
               "torch": torch.__version__, "python": platform.python_version()}
    noise = result["rel_err_first_latents_vs_fakequant"]["fp32_vs_fakequant"]
    for key in ("rel_err_first_latents_vs_fakequant", "rel_err_first_latents_vs_fp32", "rel_err_final_latents"):
        print(f"\n{key} (and in units of the step-1 quantization noise, |fakequant - fp32| = {noise:.3e})")
        for name, value in result[key].items():
            print(f"  {name:34} {value:.3e}  {value / noise:6.2f}x")
    if args.out:
        write_results(args.out, result)


if __name__ == "__main__":
    main()
