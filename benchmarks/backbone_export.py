"""Full-size export of the new backbones with random weights: SDXL's UNet (2.6 B parameters,
1024x1024 px) and FLUX.1's transformer at full width and reduced depth (4096 image tokens), through
the real exporter, one step unrolled, batch 1. Per scheme: export time, peak RAM, the denoise
graph's size against FP32, and ONNX Runtime CPU latency with the cosine to the PyTorch FP32 run.

    python benchmarks/backbone_export.py --backbone sdxl --out benchmarks/results/backbone_export_sdxl.json
    python benchmarks/backbone_export.py --backbone flux --double 2 --single 4 --out benchmarks/results/backbone_export_flux.json
    python benchmarks/backbone_export.py --backbone sdxl --small --out /tmp/x.json     # 1/8 width: checks the script

Each scheme runs in its own process (its peak RSS is its own) and `--budget` seconds bound the
whole run: a scheme that would start after it is recorded as not run. Activation ranges for static
schemes come from one observed sampler step (random weights: this measures speed and size, not
image quality). For FLUX the per-block parameter counts and export seconds are extrapolated to
FLUX.1's 19 double + 38 single blocks.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SCHEMES = ("fp32", "w8a8", "w4a8", "w4a16")
FLUX1_BLOCKS = (19, 38)


def build(args, folder: Path) -> Path:
    from qsched_export.testing import save_full_size_sdxl, save_full_width_flux

    if args.backbone == "sdxl":
        return save_full_size_sdxl(folder, small=args.small)
    return save_full_width_flux(folder, double=args.double, single=args.single, small=args.small)


def write_ranges(model: Path, out: Path, schemes: list[str]) -> Path:
    """All-ones coefficients for one step, and activation ranges observed on one step for the static schemes."""
    import torch

    from qsched_export.pipeline import denoise_fn, draw_noise, open_backbone
    from qsched_export.qsched_file import QSchedFile, SchemeEntry, write_qsched
    from qsched_export.quant import activation_ranges, get_scheme, observe_ranges
    from qsched_export.sampler import QSchedCoefficients, sample_loop

    backbone = open_backbone(str(model))
    plan = backbone.plan(1)
    cond = backbone.encode(["two small red circles on a blue background"])
    latents, noises = draw_noise(plan, backbone.latent_shape(1), torch.Generator().manual_seed(1))
    entries = {}
    for name in schemes:
        ranges = {}
        if get_scheme(name).static_activations:
            model_q, _ = backbone.scheme_model(name)
            with torch.no_grad(), observe_ranges(model_q):
                sample_loop(denoise_fn(backbone.denoiser(model_q), cond), plan, latents, noises)
            ranges = activation_ranges(model_q)
            del model_q
        entries[name] = SchemeEntry(QSchedCoefficients.ones(1), activation_ranges=ranges)
    write_qsched(out, QSchedFile(backbone.source.id, plan.family, 1, backbone.guidance.scale, entries, plan.to_dict()))
    return out


def one_scheme(args) -> dict:
    """Child process: export one scheme, time ONNX Runtime on the golden inputs, report peak RSS."""
    import numpy as np
    import onnxruntime as ort

    from qsched_export.export import ExportConfig, export_artifact
    from runtimes.manifest import load_manifest

    started = time.perf_counter()
    artifact = export_artifact(ExportConfig(out=args.work / args.one, model=str(args.model), scheme=args.one, coeffs=args.qsched, steps=1))
    export_s = time.perf_counter() - started
    manifest = load_manifest(artifact, verify=False)
    q = manifest.quantization
    row = {"scheme": args.one, "export_seconds": round(export_s, 1), "graph_export_seconds": q["export_seconds"],
           "denoise_bytes": q["onnx_bytes"]["denoise"], "layers_quantized": len(q["quantized"]), "layers_float": len(q["skipped"]),
           "model_parameter_bytes": q["bytes_before"]}
    if args.latency_runs:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.log_severity_level = 3
        t0 = time.perf_counter()
        session = ort.InferenceSession(str(artifact / "denoise.onnx"), options, providers=["CPUExecutionProvider"])
        row["session_seconds"] = round(time.perf_counter() - t0, 1)
        golden = dict(np.load(artifact / "golden.npz"))
        feeds = {i.name: golden[i.name] for i in session.get_inputs()}
        session.run(None, feeds)  # warm-up
        times = []
        for _ in range(args.latency_runs):
            t0 = time.perf_counter()
            final = session.run(["final_latents"], feeds)[0]
            times.append(time.perf_counter() - t0)
        ref = golden["fp32/final_latents"].ravel().astype(np.float64)
        out = final.ravel().astype(np.float64)
        row.update(seconds_per_step=round(min(times), 3), cosine_vs_fp32=float(out @ ref / (np.linalg.norm(out) * np.linalg.norm(ref))))
    row["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    shutil.rmtree(artifact)  # an SDXL artifact is GBs: one at a time on disk
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", choices=("sdxl", "flux"), default="sdxl")
    p.add_argument("--schemes", nargs="+", default=list(SCHEMES))
    p.add_argument("--latency", nargs="*", default=["fp32", "w8a8"], help="schemes whose ORT CPU latency is timed")
    p.add_argument("--latency-runs", type=int, default=2)
    p.add_argument("--double", type=int, default=2, help="FLUX double-stream blocks")
    p.add_argument("--single", type=int, default=4, help="FLUX single-stream blocks")
    p.add_argument("--small", action="store_true", help="1/8 width: a quick check of the script")
    p.add_argument("--budget", type=float, default=1e9, help="seconds; no scheme starts after this")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--qsched", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        args.out.write_text(json.dumps(one_scheme(args)))
        return

    import torch

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="backbone-export-") as tmp:
        work = Path(tmp)
        model = build(args, work / "model")
        built_s = time.perf_counter() - started
        qsched = write_ranges(model, work / "qsched.json", args.schemes)
        from qsched_export.pipeline import open_backbone

        backbone = open_backbone(str(model))
        params = sum(p.numel() for p in backbone.model.parameters())
        blocks = {}
        if args.backbone == "flux":
            t = backbone.model
            blocks = {"double_block_parameters": sum(p.numel() for p in t.transformer_blocks[0].parameters()),
                      "single_block_parameters": sum(p.numel() for p in t.single_transformer_blocks[0].parameters()),
                      "double": args.double, "single": args.single}
        del backbone
        rows = []
        for scheme in args.schemes:
            if time.perf_counter() - started > args.budget:
                rows.append({"scheme": scheme, "not_run": f"the {args.budget:.0f} s budget was spent"})
                continue
            child_out = work / f"{scheme}.json"
            cmd = [sys.executable, __file__, "--one", scheme, "--model", str(model), "--qsched", str(qsched), "--work", str(work),
                   "--out", str(child_out), "--latency-runs", str(args.latency_runs if scheme in args.latency else 0)]
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode != 0:
                rows.append({"scheme": scheme, "failed": (result.stderr.strip().splitlines() or ["?"])[-1][:300]})
            else:
                rows.append(json.loads(child_out.read_text()))
            print(json.dumps(rows[-1]), flush=True)
    fp32 = next((r["denoise_bytes"] for r in rows if r.get("scheme") == "fp32" and "denoise_bytes" in r), None)
    for r in rows:
        if fp32 and "denoise_bytes" in r:
            r["size_vs_fp32"] = round(r["denoise_bytes"] / fp32, 3)
    if blocks and fp32:
        # FLUX.1's depth: the transformer's size scales with its blocks; the blocks dominate its parameters.
        per_double, per_single = blocks["double_block_parameters"], blocks["single_block_parameters"]
        full = params + (FLUX1_BLOCKS[0] - args.double) * per_double + (FLUX1_BLOCKS[1] - args.single) * per_single
        blocks["flux1_parameters_extrapolated"] = full
        blocks["flux1_scale"] = round(full / params, 2)
        for r in rows:
            if "export_seconds" in r:
                r["flux1_export_seconds_extrapolated"] = round(r["export_seconds"] * blocks["flux1_scale"], 0)
                r["flux1_denoise_gb_extrapolated"] = round(r["denoise_bytes"] * blocks["flux1_scale"] / 1e9, 2)
    report = {"backbone": args.backbone, "small": args.small, "parameters": params, **blocks, "build_seconds": round(built_s, 1),
              "rows": rows, "seconds": round(time.perf_counter() - started, 1), "cpu": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "command": "python benchmarks/backbone_export.py " + " ".join(a if not a.startswith("/") else Path(a).name for a in sys.argv[1:])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{args.backbone}: {params / 1e9:.2f} B parameters; " + "; ".join(
        f"{r['scheme']} {r.get('size_vs_fp32', '-')}x {r.get('export_seconds', '-')} s export {r.get('seconds_per_step', '-')} s/step"
        for r in rows))


if __name__ == "__main__":
    main()
