"""Export benchmark: export time, artifact size, ONNX Runtime CPU latency and cosine vs FP32 of the
unrolled denoise graph, for FP32, INT8 (w8a8 Q/DQ), INT4 for ORT (w4a8 MatMulNBits) and INT4 for
TensorRT (w4a16 block DQ), all measured in one process on this machine.

Default: an SD1.5-sized UNet2DConditionModel with random weights (64x64 latent = 512x512 image,
1 step, batch 1, no CFG), in a pipeline with a small text encoder and VAE so the real exporter
runs end to end. Activation ranges for w8a8 come from one observed UNet call (random weights:
this measures speed and size, not image quality). `--small`: the embedded sample, 4 steps unrolled.

    python benchmarks/export_unet.py --out results/export_unet.json
    python benchmarks/export_unet.py --small --out results/export_small.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SCHEMES = ("fp32", "w8a8", "w4a8", "w4a16")
FUSED_OPS = ("QLinearMatMul", "QLinearConv", "MatMulInteger", "ConvInteger", "MatMulNBits", "DequantizeLinear", "QuantizeLinear")


def build_sd15_pipeline(folder: Path) -> Path:
    """An SD1.5-shaped UNet (860M parameters) with random weights, plus a 1-layer text encoder and a
    narrow VAE (the benchmark times the denoiser only)."""
    from diffusers import AutoencoderKL, LCMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from qsched_export.testing import write_clip_tokenizer  # the character-level CLIP tokenizer built in code

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                                block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=1024, num_hidden_layers=1, num_attention_heads=12,
                                                vocab_size=80, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), norm_num_groups=4, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    write_clip_tokenizer(folder / "_tok", max_length=77)
    pipe = StableDiffusionPipeline(unet=unet, text_encoder=text_encoder, vae=vae, tokenizer=CLIPTokenizer.from_pretrained(folder / "_tok"),
                                   scheduler=LCMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def write_ranges(model: Path, steps: int, guidance: float, out: Path) -> Path:
    """A qsched.json with all-ones coefficients and, for the schemes with static activations (w8a8,
    and w4a16's INT8 Conv), activation ranges from one sampler run."""
    from qsched_export.pipeline import UNetDenoiser, denoise_fn, draw_noise, encode_prompts, latent_shape, load_pipeline
    from qsched_export.qsched_file import QSchedFile, SchemeEntry, write_qsched
    from qsched_export.quant import activation_ranges, get_scheme, observe_ranges, quantize_model
    from qsched_export.sampler import QSchedCoefficients, make_plan, sample_loop

    pipe = load_pipeline(str(model))
    plan = make_plan(pipe.scheduler, steps)
    cond = encode_prompts(pipe, ["two small red circles on a blue background"], guidance)
    latents, noises = draw_noise(plan, latent_shape(pipe, 1, None, None), torch.Generator().manual_seed(1))
    ones = QSchedCoefficients.ones(steps)
    entries = {}
    for name in SCHEMES:
        scheme = get_scheme(name)
        if not scheme.static_activations:
            entries[name] = SchemeEntry(ones)
            continue
        unet = copy.deepcopy(pipe.unet)
        quantize_model(unet, scheme)
        with torch.no_grad(), observe_ranges(unet):
            sample_loop(denoise_fn(UNetDenoiser(unet, guidance), cond), plan, latents, noises)
        entries[name] = SchemeEntry(ones, activation_ranges=activation_ranges(unet))
        del unet
    write_qsched(out, QSchedFile(model=str(model), family=plan.family, steps=steps, guidance_scale=guidance, schemes=entries))
    return out


def open_session(path: Path, optimized: Path | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def op_profile(path: Path, feeds: dict, work: Path) -> dict[str, float]:
    """Seconds per ONNX Runtime op type in one profiled run (after a warm-up run): where the time goes,
    e.g. how much of an INT8 graph still runs float attention MatMul/Softmax."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_profiling = True
    options.profile_file_prefix = str(work / f"profile-{path.parent.name}")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
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
        artifact, export_s = work / scheme, None
        if (artifact / "manifest.json").is_file():
            print(f"[{scheme}] reusing {artifact}", flush=True)
        else:
            print(f"[{scheme}] exporting ...", flush=True)
            start = time.perf_counter()
            export_artifact(ExportConfig(out=artifact, model=model, scheme=scheme, coeffs=qsched, steps=steps, guidance_scale=guidance))
            export_s = round(time.perf_counter() - start, 2)
        manifest = load_manifest(artifact, verify=False)
        size = sum(p.stat().st_size for p in artifact.glob("denoise.onnx*"))
        print(f"[{scheme}] {size / 1e9:.3f} GB", flush=True)
        results[scheme] = {"target_form": manifest.target_form, "opset": manifest.opset, "export_s": export_s,
                           "export_graph_s": manifest.quantization["export_seconds"].get("denoise"), "denoise_bytes": size,
                           "quantized_layers": manifest.quantization["exported_layers"]}
        gc.collect()

    print("opening ONNX Runtime sessions ...", flush=True)
    sessions, feeds, goldens = {}, {}, {}
    for scheme in schemes:
        artifact = work / scheme
        optimized = work / f"{scheme}-optimized.onnx" if results[scheme]["denoise_bytes"] < 2**31 else None
        sessions[scheme] = open_session(artifact / "denoise.onnx", optimized)
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
    base = results.get("fp32")
    del sessions
    gc.collect()
    for scheme, r in results.items():
        if profile:
            print(f"[{scheme}] profiling op types ...", flush=True)
            r["op_seconds"] = op_profile(work / scheme / "denoise.onnx", feeds[scheme], work)
        r["latency_median_s"] = statistics.median(times[scheme])
        r["latency_runs_s"] = [round(t, 4) for t in times[scheme]]
        r["cosine_vs_torch_reference"] = cosine(outputs[scheme], goldens[scheme])
        r["cosine_vs_fp32_ort"] = cosine(outputs[scheme], outputs["fp32"]) if "fp32" in outputs else None
    for r in results.values():
        if base:
            r["size_vs_fp32"] = round(r["denoise_bytes"] / base["denoise_bytes"], 4)
            r["speedup_vs_fp32"] = round(base["latency_median_s"] / r["latency_median_s"], 3)
    return results


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
            qsched = SAMPLE_MODEL / "qsched.json"
            if not qsched.is_file():
                qsched = write_ranges(SAMPLE_MODEL, steps, 7.5, work / "qsched.json")
            title = "embedded sample, 4 steps unrolled"
        else:
            steps, guidance = 1, 1.0
            print("building the SD1.5-sized pipeline ...", flush=True)
            model = str(work / "sd15")
            if not (work / "sd15" / "model_index.json").is_file():
                build_sd15_pipeline(work / "sd15")
            qsched = work / "qsched.json"
            if not qsched.is_file():
                print("observing w8a8 activation ranges ...", flush=True)
                write_ranges(Path(model), steps, guidance, qsched)
            title = "SD1.5-sized UNet (random weights), 64x64 latent, 1 step, batch 1, no CFG"
        results = run(model, qsched, steps, guidance, args.runs, schemes, work, args.profile)
        unrolled = export_unrolled(model, args.unrolled, guidance, work) if args.unrolled else None
    report = {"title": title, "unrolled_fp32_export": unrolled, "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()},
              "onnxruntime": onnxruntime.__version__, "torch": torch.__version__, "runs": args.runs, "results": results}
    print_table(title, results)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
