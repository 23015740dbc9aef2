"""TorchScript vs dynamo exporter on the embedded sample's w8a8 (4 unrolled steps): export
seconds, bytes, Q/DQ counts, and the step-1 latent vs fake-quant in quantization-noise units.
Writes benchmarks/results/exporter_compare_sample.json (docs/EXPORTER.md).

    python benchmarks/exporter_compare_sample.py
"""
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from qsched_export.export import ExportConfig, export_artifact, onnx_io
from qsched_export.pipeline import SAMPLE_MODEL
d = Path(tempfile.mkdtemp()); res = {}
firsts = {}
for exp in ("torchscript", "dynamo"):
    os.environ["QSCHED_EXPORTER"] = exp
    t = time.perf_counter()
    out = export_artifact(ExportConfig(out=d/exp, model=None, scheme="w8a8", coeffs=SAMPLE_MODEL/"qsched.json", steps=4))
    secs = time.perf_counter() - t
    g = dict(np.load(out/"golden.npz")); s = ort.InferenceSession(str(out/"denoise.onnx"), providers=["CPUExecutionProvider"])
    firsts[exp] = s.run(["first_latents"], {i.name: g[i.name] for i in s.get_inputs()})[0]
    ops = onnx_io.op_counts(onnx.load(str(out/"denoise.onnx")))
    ref = g["fakequant/first_latents"]; noise = float(np.linalg.norm(g["fp32/first_latents"] - ref) / np.linalg.norm(ref))
    res[exp] = {"first_rel_err_in_quant_noise": float(np.linalg.norm(firsts[exp] - ref) / np.linalg.norm(ref)) / noise, "export_s": round(secs, 1), "denoise_bytes": (out/"denoise.onnx").stat().st_size, "QuantizeLinear": ops.get("QuantizeLinear"), "DequantizeLinear": ops.get("DequantizeLinear"), "nodes": sum(ops.values())}
    print(exp, res[exp], flush=True)
res["same_first_latents"] = bool(np.array_equal(firsts["torchscript"], firsts["dynamo"]))
print(res); out = Path(__file__).resolve().parent / "results" / "exporter_compare_sample.json"
out.write_text(json.dumps(res, indent=1) + "\n")
