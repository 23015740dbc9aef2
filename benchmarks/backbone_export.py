"""Full-size export of the new backbones with random weights: SDXL's UNet (2.6 B parameters,
1024x1024 px) and FLUX.1's transformer at full width and reduced depth (4096 image tokens), through
the real exporter, one step unrolled, batch 1. Per scheme: export time, peak RAM, the denoise
graph's size against FP32, and ONNX Runtime CPU latency with the cosine to the PyTorch FP32 run.

    python benchmarks/backbone_export.py --backbone sdxl --schemes w8a8 w4a16 w4a8 --latency w8a8 --jobs 3 --merge --out benchmarks/results/backbone_export_sdxl.json
    python benchmarks/backbone_export.py --backbone flux --double 2 --single 4 --jobs 4 --out benchmarks/results/backbone_export_flux.json
    python benchmarks/backbone_export.py --backbone flux --double 19 --single 38 --model-dtype fp16 --schemes fp16 --latency --size 256 --out benchmarks/results/backbone_export_flux12b.json
    python benchmarks/backbone_export.py --backbone sdxl --small --out /tmp/x.json     # 1/8 width: checks the script

Each scheme exports in its own process (its peak RSS is its own); `--jobs N` runs N exports at once
(export seconds then include the contention, recorded as `jobs`), and the latency of each scheme is
timed afterwards, one process at a time, on an otherwise idle CPU. `--budget` seconds bound the
whole run: a scheme that would start after it is recorded as not run. `--merge` adds the rows of
this run to an existing report of the same backbone (a long benchmark split across calls), and
`--rows-from LOG` writes the report from the rows a run cut short printed. Activation ranges for
static schemes come from one observed sampler step (random weights: this measures speed and size, not
image quality). For FLUX the per-block parameter counts and export seconds are extrapolated to
FLUX.1's 19 double + 38 single blocks; at that depth (the 12 B transformer) the model is made in
FP16 (`--model-dtype fp16`, 24 GB on disk instead of 48) for the FP16 export, and `--size` can shrink
the image: the graph's weights, and so its size and most of the export's time and memory, do not
depend on it, while the two PyTorch reference runs on the CPU do.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
    import torch

    from qsched_export.testing import save_full_size_sdxl, save_full_width_flux

    if args.backbone == "sdxl":
        return save_full_size_sdxl(folder, small=args.small)
    dtype = {"fp32": torch.float32, "fp16": torch.float16}[args.model_dtype]
    return save_full_width_flux(folder, double=args.double, single=args.single, small=args.small, dtype=dtype)


def peak_rss_gib() -> float:
    """This process's own peak RSS. Not getrusage's ru_maxrss: Linux carries the parent's RSS at the
    fork across exec into it, so every child of a parent holding a 30 GB model reported the parent's
    peak (the rows marked `peak_rss_gib_bound` in earlier reports). VmHWM belongs to the exec'd image."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 2**20, 2)
    raise RuntimeError("no VmHWM in /proc/self/status: this benchmark measures memory on Linux only")


def export_one(args) -> dict:
    """Child process: export one scheme into `args.work_dir / scheme`, report its size and peak RSS."""
    from qsched_export.export import ExportConfig, export_artifact
    from runtimes.manifest import load_manifest

    started = time.perf_counter()

    def note(stage: str) -> None:  # the log says how far a long export got, and when
        print(f"[{time.perf_counter() - started:7.1f} s, peak RSS {peak_rss_gib():.1f} GiB] {stage}", file=sys.stderr, flush=True)

    artifact = export_artifact(ExportConfig(out=args.work_dir / args.one, model=str(args.model_dir), scheme=args.one, coeffs=args.qsched_file,
                                            steps=1, height=args.size, width=args.size), progress=note)
    export_s = time.perf_counter() - started
    q = load_manifest(artifact, verify=False).quantization
    return {"scheme": args.one, "export_seconds": round(export_s, 1), "graph_export_seconds": q["export_seconds"],
            "denoise_bytes": q["onnx_bytes"]["denoise"], "layers_quantized": len(q["quantized"]), "layers_float": len(q["skipped"]),
            "model_parameter_bytes": q["bytes_before"], "peak_rss_gib": peak_rss_gib()}


def time_one(args) -> dict:
    """Child process: ONNX Runtime CPU latency of one exported scheme on its golden inputs."""
    import numpy as np
    import onnxruntime as ort

    from runtimes.runners import ort_session_options

    artifact = args.work_dir / args.one
    options = ort_session_options()  # the settings the runtime's own sessions take
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    t0 = time.perf_counter()
    session = ort.InferenceSession(str(artifact / "denoise.onnx"), options, providers=["CPUExecutionProvider"])
    session_s = time.perf_counter() - t0
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
    return {"session_seconds": round(session_s, 1), "seconds_per_step": round(min(times), 3),
            "cosine_vs_fp32": float(out @ ref / (np.linalg.norm(out) * np.linalg.norm(ref))),
            "latency_peak_rss_gib": peak_rss_gib()}


def child(args, scheme: str, mode: str) -> tuple[list[str], Path]:
    out = args.work_dir / f"{scheme}.{mode}.json"
    return [sys.executable, __file__, "--one", scheme, "--mode", mode, "--model", str(args.model_dir), "--work", str(args.work_dir),
            "--out", str(out), "--latency-runs", str(args.latency_runs), *(["--qsched", str(args.qsched_file)] if args.qsched_file else []),
            *(["--size", str(args.size)] if args.size else [])], out


def finish(returncode: int, stderr: str, out: Path) -> dict:
    """A child's row, or its return code and last error line (-9 with no error: killed, e.g. out of memory)."""
    if returncode != 0:
        return {"failed": (stderr.strip().splitlines() or ["?"])[-1][:300], "returncode": returncode}
    return json.loads(out.read_text())


def in_scheme_order(rows) -> list[dict]:
    """Rows in SCHEMES order (fp32 first), others after."""
    order = {s: i for i, s in enumerate(SCHEMES)}
    return sorted(rows, key=lambda r: order.get(r["scheme"], len(order)))


def run_exports(args, started: float, save) -> list[dict]:
    """Exports `args.jobs` at a time, then times the latency of each, alone; `save(rows)` after each
    result, so a run cut short keeps what finished."""
    rows, running, pending = {}, [], list(args.schemes)
    while pending or running:
        while pending and len(running) < args.jobs:
            scheme = pending.pop(0)
            if time.perf_counter() - started > args.budget:
                rows[scheme] = {"scheme": scheme, "not_run": f"the {args.budget:.0f} s budget was spent"}
                continue
            cmd, out = child(args, scheme, "export")
            # N exports each running torch on every core oversubscribe the CPU many times over (measured:
            # three full-size SDXL exports did not finish in 445 s that take 152 s alone): share the cores.
            env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // args.jobs))}
            # stderr to a file, not a pipe read only at the end: a child's progress bars would fill a
            # pipe's 64 KB and block it.
            log = out.with_suffix(".log")
            with log.open("w") as sink:
                running.append((scheme, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=sink, text=True, env=env), out))
        time.sleep(1)
        for item in [r for r in running if r[1].poll() is not None]:
            scheme, proc, out = item
            running.remove(item)
            rows[scheme] = {"scheme": scheme, "jobs": args.jobs, **finish(proc.returncode, out.with_suffix(".log").read_text(), out)}
            print(json.dumps(rows[scheme]), flush=True)
            save([rows[s] for s in args.schemes if s in rows])
    for scheme in args.schemes:
        if scheme in args.latency and "denoise_bytes" in rows[scheme]:
            cmd, out = child(args, scheme, "latency")
            result = subprocess.run(cmd, capture_output=True, text=True)
            rows[scheme].update(finish(result.returncode, result.stderr, out))
            print(json.dumps(rows[scheme]), flush=True)
            save([rows[s] for s in args.schemes])
        if (args.work_dir / scheme).exists():
            shutil.rmtree(args.work_dir / scheme)  # an SDXL artifact is GBs
    return [rows[s] for s in args.schemes]


def merged(previous: dict, report: dict) -> dict:
    """The rows of an earlier run of the same benchmark, with this run's rows replacing theirs."""
    keys = ("backbone", "small", "parameters", "size", "model_dtype")
    defaults = {"model_dtype": "fp32"}  # reports before --model-dtype; --size absent = the model's own
    if any(previous.get(k, defaults.get(k)) != report.get(k, defaults.get(k)) for k in keys):
        raise SystemExit(f"--merge: {previous.get('backbone')} report differs in {keys}; write to another --out")
    ours = {r["scheme"] for r in report["rows"]}
    rows = in_scheme_order([r for r in previous["rows"] if r["scheme"] not in ours] + report["rows"])
    # Notes about the earlier rows (a cut-off run, bounds) stay; a report from a log has no seconds.
    return {**{k: v for k, v in previous.items() if k not in report}, **report, "rows": rows,
            "runs": previous.get("runs", [previous["command"]]) + [report["command"]],
            "seconds": round(previous.get("seconds", 0) + report.get("seconds", 0), 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", choices=("sdxl", "flux"), default="sdxl")
    p.add_argument("--schemes", nargs="+", default=list(SCHEMES))
    p.add_argument("--latency", nargs="*", default=["fp32", "w8a8"], help="schemes whose ORT CPU latency is timed")
    p.add_argument("--latency-runs", type=int, default=2)
    p.add_argument("--double", type=int, default=2, help="FLUX double-stream blocks")
    p.add_argument("--single", type=int, default=4, help="FLUX single-stream blocks")
    p.add_argument("--small", action="store_true", help="1/8 width: a quick check of the script")
    p.add_argument("--model-dtype", choices=("fp32", "fp16"), default="fp32", help="FLUX: the transformer's dtype as made and saved")
    p.add_argument("--size", type=int, help="image height and width in pixels (default: the model's, 1024)")
    p.add_argument("--budget", type=float, default=1e9, help="seconds; no scheme starts after this")
    p.add_argument("--jobs", type=int, default=1, help="exports run at once (each needs its own peak RAM)")
    p.add_argument("--merge", action="store_true", help="add these rows to the report already at --out")
    p.add_argument("--rows-from", type=Path, help="the log of a run cut short: its printed rows become the report (no export)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=("export", "latency"), help=argparse.SUPPRESS)
    p.add_argument("--model", type=Path, dest="model_dir", help=argparse.SUPPRESS)
    p.add_argument("--qsched", type=Path, dest="qsched_file", help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, dest="work_dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        args.out.write_text(json.dumps(export_one(args) if args.mode == "export" else time_one(args)))
        return
    if args.merge and not args.out.is_file():
        raise SystemExit(f"--merge: no report at {args.out} to add to; run without --merge first")

    import torch

    started = time.perf_counter()
    previous = json.loads(args.out.read_text()) if args.merge else None

    def save(rows: list[dict]) -> None:
        # Rows from a log were measured elsewhere: this machine's cpu, threads, torch and time are not theirs.
        machine = {} if args.rows_from else {"seconds": round(time.perf_counter() - started, 1), "cpu": platform.processor() or platform.machine(),
                                             "threads": torch.get_num_threads(), "torch": torch.__version__}
        report = {"backbone": args.backbone, "small": args.small, **header, "rows": rows, **machine,
                  "command": "python benchmarks/backbone_export.py " + " ".join(a if not a.startswith("/") else Path(a).name for a in sys.argv[1:])}
        if previous is not None:
            report = merged(previous, report)
        with_ratios(report)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")

    with tempfile.TemporaryDirectory(prefix="backbone-export-") as tmp:
        work = Path(tmp)
        model = build(args, work / "model")
        header = {**model_header(args, model), "build_seconds": round(time.perf_counter() - started, 1)}
        if args.rows_from:
            save(logged_rows(args.rows_from))
        else:
            from qsched_export.quant import get_scheme
            from qsched_export.testing import write_observed_qsched

            # Static schemes need activation ranges; the others export without a qsched.json (coefficients 1),
            # which spares the 12 B run two loads of the model.
            args.qsched_file = (write_observed_qsched(model, work / "qsched.json", tuple(args.schemes), steps=1, seed=1,
                                                      prompts=("two small red circles on a blue background",))
                                if any(get_scheme(s).static_activations for s in args.schemes) else None)
            args.model_dir, args.work_dir = model, work
            save(run_exports(args, started, save))
    rows = json.loads(args.out.read_text())["rows"]
    print(f"{args.backbone}: {header['parameters'] / 1e9:.2f} B parameters; " + "; ".join(
        f"{r['scheme']} {r.get('size_vs_fp32', '-')}x {r.get('export_seconds', '-')} s export {r.get('seconds_per_step', '-')} s/step"
        for r in rows))


def model_header(args, model: Path) -> dict:
    """Parameter counts, from the saved config on the meta device (loading a 12 B model to count it
    would cost minutes and its RAM)."""
    import torch
    from diffusers import FluxTransformer2DModel, UNet2DConditionModel

    cls, sub = (UNet2DConditionModel, "unet") if args.backbone == "sdxl" else (FluxTransformer2DModel, "transformer")
    with torch.device("meta"):
        denoiser = cls.from_config(cls.load_config(model / sub))
    header = {"parameters": sum(p.numel() for p in denoiser.parameters()), **({"size": args.size} if args.size else {})}
    if args.backbone == "flux":
        header.update(double_block_parameters=sum(p.numel() for p in denoiser.transformer_blocks[0].parameters()),
                      single_block_parameters=sum(p.numel() for p in denoiser.single_transformer_blocks[0].parameters()),
                      double=args.double, single=args.single, model_dtype=args.model_dtype)
    return header


def logged_rows(log: Path) -> list[dict]:
    """The rows a run printed before it was cut short (one JSON object per line; a later line of a
    scheme, its latency, completes the earlier one)."""
    rows: dict[str, dict] = {}
    for line in log.read_text().splitlines():
        if line.startswith('{"scheme"'):
            row = json.loads(line)
            rows.setdefault(row["scheme"], {}).update(row)
    if not rows:
        raise SystemExit(f"--rows-from: {log} holds no result rows")
    return in_scheme_order(rows.values())


def with_ratios(report: dict) -> None:
    """Size against FP32, and for FLUX the per-block figures extrapolated to FLUX.1's depth."""
    rows = report["rows"]
    fp32 = next((r["denoise_bytes"] for r in rows if r.get("scheme") == "fp32" and "denoise_bytes" in r), None)
    for r in rows:
        if fp32 and "denoise_bytes" in r:
            r["size_vs_fp32"] = round(r["denoise_bytes"] / fp32, 3)
    if report["backbone"] != "flux" or not fp32:
        return
    # FLUX.1's depth. Export time scales with the parameters (the blocks dominate them). The graph's
    # bytes do not scale as a whole: the layers outside the blocks (embedders, norm_out, proj_out)
    # stay float in every scheme, so the blocks' bytes per parameter are measured and scaled alone.
    block_params = report["double"] * report["double_block_parameters"] + report["single"] * report["single_block_parameters"]
    full_block_params = FLUX1_BLOCKS[0] * report["double_block_parameters"] + FLUX1_BLOCKS[1] * report["single_block_parameters"]
    float_bytes = 4 * (report["parameters"] - block_params)
    full = report["parameters"] - block_params + full_block_params
    report["flux1_parameters_extrapolated"] = full
    report["flux1_scale"] = round(full / report["parameters"], 2)
    def full_bytes(denoise_bytes: int) -> float:
        return float_bytes + (denoise_bytes - float_bytes) / block_params * full_block_params

    for r in rows:
        if "export_seconds" in r:
            r["flux1_export_seconds_extrapolated"] = round(r["export_seconds"] * report["flux1_scale"], 0)
            r["flux1_denoise_gb_extrapolated"] = round(full_bytes(r["denoise_bytes"]) / 1e9, 2)
            r["flux1_size_vs_fp32_extrapolated"] = round(full_bytes(r["denoise_bytes"]) / full_bytes(fp32), 3)


if __name__ == "__main__":
    main()
