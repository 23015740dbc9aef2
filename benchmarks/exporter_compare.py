"""TorchScript vs dynamo exporter (`QSCHED_EXPORTER=dynamo`) on the tests' tiny unrolled TCD
denoise graph: export seconds, file bytes, op counts, and the step-1 latent against the golden
fake-quant reference, per scheme. docs/EXPORTER.md reads this.

    python benchmarks/exporter_compare.py --out benchmarks/results/exporter_compare.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.results_json import write_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schemes", default="w8a8,w4a8s,w4a8")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import onnx
    import onnxruntime as ort
    import torch
    from qsched_export.export import ExportConfig, export_artifact, onnx_io
    from qsched_export.sampler import QSchedCoefficients
    from qsched_export.testing import save_tiny_sd, write_observed_qsched

    schemes = args.schemes.split(",")
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = save_tiny_sd(work / "pipe", scheduler_cls="TCDScheduler")
        qsched = write_observed_qsched(model, work / "qsched.json", tuple(schemes), steps=2, guidance=2.0, gamma=0.3, seed=1,
                                       prompts=("a red circle", "two blue squares"), coefficients=QSchedCoefficients.ramp((0.95, 1.0), (1.05, 1.0), 2))
        for scheme in schemes:
            for exporter in onnx_io.EXPORTERS:
                os.environ[onnx_io.EXPORTER_ENV] = exporter
                key = f"{scheme}/{exporter}"
                start = time.perf_counter()
                try:
                    out = export_artifact(ExportConfig(out=work / key.replace("/", "-"), model=str(model), scheme=scheme, coeffs=qsched, steps=2, gamma=0.3))
                except Exception as exc:  # recorded: which exporter cannot write which scheme
                    rows[key] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
                    print(key, rows[key]["error"])
                    continue
                finally:
                    os.environ.pop(onnx_io.EXPORTER_ENV, None)
                seconds = time.perf_counter() - start
                golden = dict(np.load(out / "golden.npz"))
                session = ort.InferenceSession(str(out / "denoise.onnx"), providers=["CPUExecutionProvider"])
                first = session.run(["first_latents"], {i.name: golden[i.name] for i in session.get_inputs()})[0]
                ref = golden["fakequant/first_latents"]
                rows[key] = {"export_s": round(seconds, 2), "denoise_bytes": (out / "denoise.onnx").stat().st_size,
                             "ops": onnx_io.op_counts(onnx.load(str(out / "denoise.onnx"))),
                             "first_rel_err_vs_fakequant": float(np.linalg.norm(first - ref) / np.linalg.norm(ref)), "first_latents": first}
                print(key, {k: v for k, v in rows[key].items() if k not in ("ops", "first_latents")})
    for scheme in schemes:
        a, b = rows.get(f"{scheme}/torchscript", {}), rows.get(f"{scheme}/dynamo", {})
        if "first_latents" in a and "first_latents" in b:
            b["same_outputs_as_torchscript"] = bool(np.array_equal(a["first_latents"], b["first_latents"]))
            b["same_qdq_counts"] = all(a["ops"].get(op) == b["ops"].get(op) for op in ("QuantizeLinear", "DequantizeLinear", "Conv", "MatMul"))
    for row in rows.values():
        row.pop("first_latents", None)
    result = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__, "results": rows}
    try:
        import onnxscript

        result["onnxscript"] = onnxscript.__version__
    except ImportError:
        pass
    if args.out:
        write_results(args.out, result)


if __name__ == "__main__":
    main()
