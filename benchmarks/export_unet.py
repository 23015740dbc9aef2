"""Export benchmark: export time, artifact size, ONNX Runtime CPU latency and cosine vs FP32 of the
unrolled denoise graph, for FP32, INT8 (w8a8 Q/DQ), INT4 for ORT (w4a8 MatMulNBits) and INT4 for
TensorRT (w4a16 block DQ), all measured in one process on this machine.

Default: an SD1.5-sized UNet2DConditionModel with random weights (64x64 latent = 512x512 image,
1 step, batch 1, no CFG), in a pipeline with a small text encoder and VAE so the real exporter
runs end to end. Activation ranges come from one observed UNet call (random weights: this
measures speed and size, not image quality). `--small`: the embedded sample, 4 steps unrolled.

Schemes are ONNX Runtime's forms (`runtimes.schemes.scheme_for("onnxruntime", ...)`), named
`<scheme>[+attn][@7bit|@full][+mha]`: `w8a8` (weight range detected on this CPU), `w8a8+attn` (int8
attention), `w8a8@7bit`, `w4a8s` (int4 stored, int8 kernels), `w4a8` (MatMulNBits + block-int4
Conv), `w4a16` (TensorRT's INT4 form, run on ORT), `fp32`. `+mha`: the same artifact with its
float attention fused to MultiHeadAttention as the onnxruntime target builds it with
`fuse_attention` (`targets.onnxruntime.fuse_attention_graph`); its speedup is against `fp32+mha` when that runs too,
so both sides have the same attention kernel.

    python benchmarks/export_unet.py --out results/export_unet.json
    python benchmarks/export_unet.py --small --out results/export_small.json
    python benchmarks/export_unet.py --runs 3 --profile --schemes fp32,w8a8,fp32+mha,w8a8+mha --out results/export_unet_fused.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

# This checkout's packages, not an installed copy's (the script runs from benchmarks/).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results_json import write_results  # noqa: E402

SCHEMES = ("fp32", "w8a8", "w8a8+attn", "w4a8s", "w4a8")
FUSED = "+mha"
FUSED_OPS = ("MultiHeadAttention", "QLinearMatMul", "QLinearConv", "MatMulIntegerToFloat", "MatMulInteger", "ConvInteger", "MatMulNBits", "DequantizeLinear",
             "QuantizeLinear")


def scheme_of(spec: str):
    """`w8a8+attn@7bit` -> the ONNX Runtime scheme (placement, weight range, int8 attention)."""
    from qsched_export.quant import get_scheme, scheme_for

    name, _, weight_range = spec.removesuffix(FUSED).partition("@")
    name, attn, _ = name.partition("+attn")
    base = get_scheme(name)
    return scheme_for("onnxruntime", base.bits, scheme=name, weight_range=weight_range or None, int8_attention=bool(attn) or "+attn" in spec)


def write_ranges(model: Path, steps: int, guidance: float | None, out: Path) -> Path:
    """A qsched.json with all-ones coefficients and, for the schemes with static activations, the
    activation ranges of one observed sampler run. Ranges are float-model observations: one run
    (with int8 attention, so the q/k/v ranges are there too) serves every scheme."""
    from qsched_export.qsched_file import read_qsched, write_qsched
    from qsched_export.quant import get_scheme
    from qsched_export.testing import write_observed_qsched

    observed = read_qsched(write_observed_qsched(model, out, (scheme_of("w8a8+attn"),), steps=steps, guidance=guidance, seed=1,
                                                 prompts=("two small red circles on a blue background",)))
    entry = observed.schemes["w8a8"]
    entries = {name: replace(entry, activation_ranges=entry.activation_ranges if get_scheme(name).static_activations else {})
               for name in ("fp32", "w8a8", "w4a8", "w4a8s", "w4a16")}
    write_qsched(out, replace(observed, schemes=entries))
    return out


def open_session(path: Path, optimized: Path | None = None, profile_prefix: str | None = None):
    """An ONNX Runtime CPU session with the runtime's own settings, opened as the runtime opens a
    graph: w4a8s' int4 weights expanded to int8 layer by layer first (runtimes.int4.ort_source;
    ORT's own folding peaks at ~24 GB on an SD1.5-sized UNet)."""
    import onnxruntime as ort

    from runtimes.int4 import ort_source
    from runtimes.runners import ort_session_options

    options = ort_session_options()  # the settings the runtime's own sessions take
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    with ort_source(path) as source:  # a session holds its weights once created
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def op_profile(path: Path, feeds: dict, work: Path) -> dict[str, float]:
    """Seconds per ONNX Runtime op type in one profiled run (after a warm-up run): where the time goes,
    e.g. how much of an INT8 graph still runs float attention MatMul/Softmax."""
    session = open_session(path, profile_prefix=str(work / f"profile-{path.parent.name}"))
    session.run(None, feeds)
    session.run(None, feeds)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    last_run = max(e["ts"] for e in events if e.get("name") == "model_run")
    totals: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= last_run:
            totals[e["args"]["op_name"]] = totals.get(e["args"]["op_name"], 0.0) + e["dur"] / 1e6
    return dict(sorted(((k, round(v, 4)) for k, v in totals.items()), key=lambda kv: -kv[1]))


def interleaved_latency(sessions: dict, feeds: dict, runs: int) -> tuple[dict, dict]:
    """One warm-up each, then `runs` rounds that run every scheme once in turn, so all schemes see the
    same machine load (this 2-core machine is shared); returns (outputs, times) per scheme."""
    outputs, times = {}, {name: [] for name in sessions}
    for name, session in sessions.items():
        outputs[name] = session.run(None, feeds[name])[0]
    for _ in range(runs):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feeds[name])
            times[name].append(time.perf_counter() - start)
    return outputs, times


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def run(model: str | None, qsched: Path | None, steps: int, guidance: float | None, runs: int, schemes: tuple[str, ...], work: Path,
        profile: bool) -> dict:
    """Export each scheme (reusing an artifact already in `work`), then time them all interleaved."""
    import onnx

    from qsched_export.export import ExportConfig, export_artifact
    from runtimes.manifest import load_manifest

    results: dict[str, dict] = {}
    for scheme in schemes:
        artifact, export_s = work / scheme.removesuffix(FUSED), None
        if (artifact / "manifest.json").is_file():
            print(f"[{scheme}] reusing {artifact}", flush=True)
        else:
            print(f"[{scheme}] exporting ...", flush=True)
            start = time.perf_counter()
            export_artifact(ExportConfig(out=artifact, model=model, scheme=scheme_of(scheme), coeffs=qsched, steps=steps, guidance_scale=guidance))
            export_s = round(time.perf_counter() - start, 2)
        manifest = load_manifest(artifact, verify=False)
        size = sum(p.stat().st_size for p in artifact.glob("denoise.onnx*"))
        print(f"[{scheme}] {size / 1e9:.3f} GB", flush=True)
        results[scheme] = {"target_form": manifest.target_form, "fused_attention": None, "weight_range": manifest.scheme.get("weight_range"),
                           "int8_attention": manifest.scheme.get("int8_attention"), "opset": manifest.opset, "export_s": export_s,
                           "export_graph_s": manifest.quantization["export_seconds"].get("denoise"), "denoise_bytes": size,
                           "quantized_layers": manifest.quantization["exported_layers"]}
        gc.collect()

    print("opening ONNX Runtime sessions ...", flush=True)
    sessions, feeds, goldens, graphs = {}, {}, {}, {}
    for scheme in schemes:
        artifact = work / scheme.removesuffix(FUSED)
        graphs[scheme] = artifact / "denoise.onnx"
        if scheme.endswith(FUSED):
            graphs[scheme] = fused_graph(graphs[scheme], work / scheme / "denoise.onnx", results[scheme])
        optimized = work / f"{scheme}-optimized.onnx" if results[scheme]["denoise_bytes"] < 2**31 else None
        sessions[scheme] = open_session(graphs[scheme], optimized)
        golden = dict(np.load(artifact / "golden.npz"))
        feeds[scheme] = {i.name: golden[i.name] for i in sessions[scheme].get_inputs()}
        goldens[scheme] = golden.get("fakequant/final_latents", golden["fp32/final_latents"])
        ops = {}
        if optimized is not None and optimized.exists():
            graph = onnx.load(str(optimized), load_external_data=False).graph
            ops = {op: sum(n.op_type == op for n in graph.node) for op in FUSED_OPS}
            for extra in work.glob(f"{scheme}-optimized.onnx*"):
                extra.unlink()
        results[scheme]["optimized_ops"] = {k: v for k, v in ops.items() if v}
    print(f"timing {runs} interleaved rounds ...", flush=True)
    outputs, times = interleaved_latency(sessions, feeds, runs)
    del sessions
    gc.collect()
    for scheme, r in results.items():
        if profile:
            print(f"[{scheme}] profiling op types ...", flush=True)
            r["op_seconds"] = op_profile(graphs[scheme], feeds[scheme], work)
        r["latency_median_s"] = statistics.median(times[scheme])
        r["latency_runs_s"] = [round(t, 4) for t in times[scheme]]
        r["cosine_vs_torch_reference"] = cosine(outputs[scheme], goldens[scheme])
        r["cosine_vs_fp32_ort"] = cosine(outputs[scheme], outputs["fp32"]) if "fp32" in outputs else None
    for scheme, r in results.items():
        base = results.get("fp32" + FUSED) if scheme.endswith(FUSED) and "fp32" + FUSED in results else results.get("fp32")
        if base:
            r["size_vs_fp32"] = round(r["denoise_bytes"] / base["denoise_bytes"], 4)
            r["speedup_vs_fp32"] = round(base["latency_median_s"] / r["latency_median_s"], 3)
        unfused = results.get(scheme.removesuffix(FUSED))
        if scheme.endswith(FUSED) and unfused:
            r["speedup_vs_unfused"] = round(unfused["latency_median_s"] / r["latency_median_s"], 3)
    return results


def fused_graph(src: Path, dst: Path, result: dict) -> Path:
    """`src` with its float attention fused, as the onnxruntime target prepares it (kept in `dst`'s
    folder and reused); records the fusion's seconds and count in `result`."""
    from qsched_export.targets.onnxruntime import fuse_attention_graph

    import onnx

    seconds = None
    if dst.is_file():
        print(f"[{dst.parent.name}] reusing {dst}", flush=True)
    else:
        print(f"[{dst.parent.name}] fusing attention ...", flush=True)
        dst.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        if not fuse_attention_graph(src, dst, ["CPUExecutionProvider"])[0]:
            raise SystemExit(f"no attention in {src} matched the fusion pattern")
        seconds = round(time.perf_counter() - start, 2)
    count = sum(n.op_type == "MultiHeadAttention" for n in onnx.load(str(dst), load_external_data=False).graph.node)
    result["fused_attention"] = {"count": count, "seconds": seconds}
    return dst


def export_unrolled(model: str | None, steps: int, guidance: float | None, work: Path) -> dict:
    """FP32 export time and size of the graph unrolled over `steps` (all-ones coefficients): the
    size stays that of one step, since the steps share one copy of the weights."""
    from qsched_export.export import ExportConfig, export_artifact

    print(f"[fp32 x{steps}] exporting ...", flush=True)
    start = time.perf_counter()
    artifact = export_artifact(ExportConfig(out=work / f"fp32-{steps}steps", model=model, scheme="fp32", steps=steps, guidance_scale=guidance))
    seconds = time.perf_counter() - start
    size = sum(p.stat().st_size for p in artifact.glob("denoise.onnx*"))
    print(f"[fp32 x{steps}] exported in {seconds:.1f} s, {size / 1e9:.3f} GB", flush=True)
    return {"steps": steps, "export_s": round(seconds, 2), "denoise_bytes": size}


def print_table(title: str, results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("scheme", "form", "export s", "denoise MB", "size x", "ORT median s", "speedup", "cos vs fp32", "cos vs torch ref", "fused ops"):
        table.add_column(col)
    for scheme, r in results.items():
        cos = r["cosine_vs_fp32_ort"]
        table.add_row(scheme, r["target_form"], "reused" if r["export_s"] is None else f"{r['export_s']:.1f}", f"{r['denoise_bytes'] / 1e6:.1f}", f"{r.get('size_vs_fp32', 1):.3f}",
                      f"{r['latency_median_s']:.3f}", f"{r.get('speedup_vs_fp32', 1):.2f}x", "-" if cos is None else f"{cos:.5f}",
                      f"{r['cosine_vs_torch_reference']:.5f}", ", ".join(f"{k} {v}" for k, v in r["optimized_ops"].items()))
    Console().print(table)


def command() -> str:
    """This run's command line, less --workdir (a cache on this machine, not a setting), with an
    absolute path cut to its file name (a committed result names no machine's folders)."""
    argv = sys.argv[1:]
    kept = [a for i, a in enumerate(argv) if a != "--workdir" and not a.startswith("--workdir=") and (i == 0 or argv[i - 1] != "--workdir")]
    return " ".join(["python benchmarks/export_unet.py", *(Path(a).name if a.startswith("/") else a for a in kept)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="the embedded sample, 4 steps unrolled, instead of the SD1.5-sized UNet")
    parser.add_argument("--runs", type=int, default=10, help="timed runs per scheme (after one warm-up); the median is reported")
    parser.add_argument("--schemes", default=",".join(SCHEMES))
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--unrolled", type=int, default=0, help="also time the FP32 export of the graph unrolled over this many steps")
    parser.add_argument("--profile", action="store_true", help="also record ONNX Runtime seconds per op type (one profiled run per scheme)")
    parser.add_argument("--workdir", type=Path, help="keep the model and artifacts here and reuse those already there (default: a temp folder, removed)")
    args = parser.parse_args()
    schemes = tuple(args.schemes.split(","))
    import onnxruntime

    with contextlib.ExitStack() as stack:
        work = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="qsched-bench-")))
        work.mkdir(parents=True, exist_ok=True)
        if args.small:
            from qsched_export.pipeline import SAMPLE_MODEL, resolve_model

            resolve_model(None)  # fails with a clear message while the sample is missing
            steps, guidance, model = 4, None, None
            # The sample's calibrated guidance, and ranges observed here for every scheme (its
            # qsched.json holds no int8-attention or w4a8s entries); coefficients 1 (speed, not quality).
            from qsched_export.qsched_file import read_qsched

            sample_guidance = read_qsched(SAMPLE_MODEL / "qsched.json").guidance_scale
            qsched = work / "qsched.json"
            if not qsched.is_file():
                write_ranges(SAMPLE_MODEL, steps, sample_guidance, qsched)
            title = "embedded sample, 4 steps unrolled"
        else:
            steps, guidance = 1, 1.0
            print("building the SD1.5-sized pipeline ...", flush=True)
            model = str(work / "sd15")
            if not (work / "sd15" / "model_index.json").is_file():
                from qsched_export.testing import save_sd15_sized

                save_sd15_sized(work / "sd15")
            qsched = work / "qsched.json"
            if not qsched.is_file():
                print("observing w8a8 activation ranges ...", flush=True)
                write_ranges(Path(model), steps, guidance, qsched)
            title = "SD1.5-sized UNet (random weights), 64x64 latent, 1 step, batch 1, no CFG"
        results = run(model, qsched, steps, guidance, args.runs, schemes, work, args.profile)
        unrolled = export_unrolled(model, args.unrolled, guidance, work) if args.unrolled else None
    from runtimes import cpu

    report = {"title": title, "unrolled_fp32_export": unrolled, "machine": {"cpu": cpu.probe().to_dict(), "threads": torch.get_num_threads()},
              "onnxruntime": onnxruntime.__version__, "torch": torch.__version__, "runs": args.runs, "command": command(), "results": results}
    print_table(title, results)
    if args.out:
        write_results(args.out, report)


if __name__ == "__main__":
    main()
