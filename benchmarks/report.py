"""Regenerate docs/RESULTS.md (tables) and docs/results_*.png (plots) from benchmarks/results/*.json.

    python benchmarks/report.py

Nothing in the report is typed by hand: every number comes from a JSON file a benchmark wrote.
"""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DOCS = REPO / "docs"


def _load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def _fmt(m: dict, digits: int) -> str:
    ci = m.get("ci95")
    return f"{m['mean']:.{digits}f}" + (f" ± {ci:.{digits}f}" if ci == ci and ci is not None else "")


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def quality_section(data: dict, title: str) -> str:
    cfg = data["config"]
    out = [f"## {title} ({data['device']})",
           "`python benchmarks/quality.py" + (f" --model {cfg['model']}" if cfg.get("model") else "")
           + f" --device {cfg['device']} --prompts {cfg['prompts']} --seeds {cfg['seeds']} --guidance {cfg['guidance']:g} "
           f"--schemes {' '.join(cfg['schemes'])}" + (f" --range {cfg['range'][0]:g} {cfg['range'][1]:g}" if "range" in cfg else "") + "` — "
           f"{cfg['prompts']} held-out prompts x {cfg['seeds']} seeds (mean ± 95% CI over seeds). Scored with the evaluation judge "
           "(shapes-clip-b); coefficients calibrated with JAQ on the calibration judge (shapes-clip-a), "
           f"grid {cfg['grid']}x{cfg['grid']} + refinement, on samples/prompts/calibration.txt. "
           "FD = Frechet distance of judge-b image features to real renders of the same scenes (an FID analogue; lower is better); "
           "acc = the procedural analyser's all-attributes-correct rate. True FID: "
           + ("computed (`fid`)." if data.get("fid", {}).get("computed") else f"not computed ({data.get('fid', {}).get('reason', 'no Inception weights')}).")
           + ("" if "seconds" in data else f" **This run was cut short (device time ran out) after {len(data['runs'])} rows: the rows missing below were not measured.**"),
           ""]
    headers = ["configuration", "steps", "guidance", "FD ↓", "CLIPScore ↑", "CLIP-IQA ↑", "acc ↑", "colour", "count", "c^x ramp", "c^eps ramp"]
    rows = []
    for r in data["runs"]:
        m, c = r["metrics"], r.get("coefficients")
        ramp = lambda v: f"{v[0]:.3f} → {v[-1]:.3f}" if v else "1"  # noqa: E731
        rows.append([r["name"], str(r["steps"]), f"{r['guidance']:g}", _fmt(m["frechet"], 4), _fmt(m["clipscore"], 2),
                     _fmt(m["clip_iqa"], 3), _fmt(m["acc_all"], 3), f"{m['acc_colour']['mean']:.3f}", f"{m['acc_count']['mean']:.3f}",
                     ramp(c["latent_coeff"]) if c else "1", ramp(c["output_coeff"]) if c else "1"])
    out.append(_table(headers, rows))
    out.append("")
    out += _effects(data["runs"])
    return "\n".join(out)


def _effects(runs: list[dict]) -> list[str]:
    """The two effects the issue asks to separate: quantization loss recovered and sampler gain."""
    lines = ["### Two effects, separated (FD, lower is better)", ""]
    by = {(r["name"], r["steps"], r["guidance"]): r["metrics"]["frechet"]["mean"] for r in runs}
    for steps in sorted({r["steps"] for r in runs}):
        g = next(r["guidance"] for r in runs if r["steps"] == steps and r["name"] == "fp32")
        fp32, fp32_qs = by.get(("fp32", steps, g)), by.get(("fp32+qsched", steps, g))
        sweep = [v for (n, s, _), v in by.items() if s == steps and n in ("fp32", "fp32 guidance sweep")]
        best_g = min(sweep) if sweep else None
        for scheme in sorted({r["name"] for r in runs if r["name"].startswith("w") and "+" not in r["name"]}):
            naive, qs = by.get((scheme, steps, g)), by.get((f"{scheme}+qsched", steps, g))
            if None in (naive, qs, fp32, fp32_qs):
                continue
            lines.append(f"- {steps} steps, {scheme}: quantization cost (naive − FP32) {naive - fp32:+.4f}; "
                         f"quantized + Q-Sched vs FP32 {qs - fp32:+.4f} ({100 * (qs - fp32) / fp32:+.1f}%); "
                         f"quantization loss left after Q-Sched ((quant+QS) − (FP32+QS)) {qs - fp32_qs:+.4f}")
        if fp32 is not None and fp32_qs is not None and best_g is not None:
            lines.append(f"- {steps} steps: sampler gain ((FP32+QS) − best-guidance FP32) {fp32_qs - best_g:+.4f}; "
                         f"Q-Sched on FP32 vs FP32 {fp32_qs - fp32:+.4f}")
    edges = [f"{r['name']} ({r['steps']} steps): {', '.join(r['on_edge'])}" for r in runs if r.get("on_edge")]
    lines.append("")
    lines.append("Coefficients on the edge of the search range: " + ("; ".join(edges) if edges else "none."))
    return lines


def quality_plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in data["runs"] if r["name"] != "fp32 guidance sweep"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, key, label in ((axes[0], "frechet", "Frechet distance (judge b) ↓"), (axes[1], "acc_all", "analyser all-correct ↑")):
        names = [f"{r['name']}\n{r['steps']} steps" for r in runs]
        means = [r["metrics"][key]["mean"] for r in runs]
        errs = [r["metrics"][key]["ci95"] if r["metrics"][key]["ci95"] == r["metrics"][key]["ci95"] else 0 for r in runs]
        colours = ["#888" if r["name"].startswith("fp32") else ("#2a7" if "qsched" in r["name"] else "#c44") for r in runs]
        ax.bar(range(len(runs)), means, yerr=errs, color=colours)
        ax.set_xticks(range(len(runs)), names, rotation=70, fontsize=6)
        ax.set_title(label, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def gpu_section(data: dict) -> str:
    """benchmarks/gpu_latency.py: PyTorch latency rows, then the SD1.5-sized calibration speed."""
    latency = [{"model": r["model"], "measure": r["measure"], "dtype": r["dtype"], "batch": r["batch"], "image": r["image"],
                "median s": r["median_s"], "s / image": r["s_per_image"], "peak MiB": r["peak_mem_mib"]} for r in data["rows"]]
    calib = [{"UNet": r["unet"], "prompts": r["prompts"], "steps": r["steps"], "points / s": r["points_per_second"],
              "search evaluations": r["search_evaluations"], "search min (extrapolated)": r["search_minutes_extrapolated"],
              "paper min (A6000)": r["paper_minutes_a6000"], "peak MiB": r["peak_mem_mib"]} for r in data["calibration"]]
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    return "\n".join([f"## {data['title']} ({data['device']})", "", f"`{data['command']}`", "", data["note"], "",
                      _table(list(latency[0]), [[cell(r[h]) for h in latency[0]] for r in latency]), "",
                      "Calibration speed of an SD1.5-sized UNet + VAE (random weights) with the sample's judge:", "",
                      _table(list(calib[0]), [[cell(r[h]) for h in calib[0]] for r in calib])])


def generic_section(title: str, data: dict) -> str:
    """Benchmarks that print their own rows: a `rows` list of flat dicts becomes a table."""
    rows = data.get("rows") or _scheme_rows(data.get("results"))
    if not rows:
        return f"## {title}\n\n```json\n{json.dumps(data, indent=1)[:4000]}\n```"
    headers = list(rows[0])
    body = [[f"{r.get(h):.4g}" if isinstance(r.get(h), float) else str(r.get(h)) for h in headers] for r in rows]
    command = data.get("command", "")
    unrolled = data.get("unrolled_fp32_export")
    if unrolled:  # the export-time run: its one-round latency row is not a measurement worth a table
        return "\n".join([f"## {title}", "", f"FP32 denoise graph unrolled over {unrolled['steps']} steps: exported in {unrolled['export_s']:.0f} s, "
                          f"{unrolled['denoise_bytes'] / 1e9:.3f} GB (the steps share one copy of the weights)."])
    return "\n".join([f"## {title}", "", f"`{command}` on {data.get('device', 'this machine')}" if command else "", _machine(data), "",
                      _table(headers, body)])


def _machine(data: dict) -> str:
    """The CPU a benchmark/export_unet.py run names (its int8 kernel decides the speed), if it names one."""
    cpu = data.get("machine", {}).get("cpu")
    if not isinstance(cpu, dict):
        return ""
    return f"CPU: {cpu['model']} ({cpu['arch']}, int8 kernel {cpu['int8_kernel']}), {data['machine']['threads']} threads."


def _scheme_rows(results: dict | list | None) -> list[dict]:
    """benchmarks/export_unet.py keys its results by scheme; runtime_latency.py lists artifacts."""
    if isinstance(results, list):
        return [{"scheme": r["scheme"], "runtime": r["runtime"], "steps": r["steps"], "graphs MB": sum(r["graph_bytes"].values()) / 1e6,
                 "s per image": r["image_seconds"], "s per denoise call": r["denoise_seconds"],
                 "parity": "PASSED" if r["parity"]["passed"] else "FAILED"} for r in results]
    if not isinstance(results, dict):
        return []
    fused = any("speedup_vs_unfused" in r for r in results.values())
    return [{"scheme": name, "form": r["target_form"], "opset": r["opset"], "size GB": r["denoise_bytes"] / 1e9,
             "size vs fp32": r["size_vs_fp32"], "median s": r["latency_median_s"], "speedup": r["speedup_vs_fp32"],
             **({"speedup vs unfused": r.get("speedup_vs_unfused", "-")} if fused else {}),
             "cosine vs fp32": r["cosine_vs_fp32_ort"], "export s": r["export_graph_s"], "time by op type": _op_shares(r.get("op_seconds"))}
            for name, r in results.items()]


def _op_shares(op_seconds: dict | None, top: int = 5) -> str:
    """The op types that take most of a profiled run, as shares of it."""
    if not op_seconds:
        return "-"
    total = sum(op_seconds.values())
    return ", ".join(f"{op} {100 * t / total:.0f}%" for op, t in list(op_seconds.items())[:top])


SECTIONS = (
    ("sample_grid.json", "Embedded sample on CPU: 2/4/8 steps, FP32 / W8A8 / W4A8 / W4A8 + Q-Sched (docs/sample_quant_grid.png)"),
    ("export_unet.json", "Export size and ONNX Runtime CPU latency: SD1.5-sized UNet, 1 step, before the per-runtime Q/DQ placement (`python benchmarks/export_unet.py --profile`)"),
    ("export_unet_int8.json", "The same after the per-runtime Q/DQ placement, with int8 attention and w4a8s (`python benchmarks/export_unet.py --runs 3 --profile --schemes fp32,w8a8,w8a8+attn,w4a8s,w4a8`)"),
    ("export_unet_fused.json", "The same with float attention fused into ORT's MultiHeadAttention (`build --fuse-attention`; +mha speedups are against fp32+mha)"),
    ("export_unet_host.json", "The same on the H200 machine's 16-core host CPU (Xeon, AMX-INT8 + AVX512-VNNI, ONNX Runtime 1.30): plain and fused attention (`python benchmarks/export_unet.py --runs 5 --profile --schemes fp32,w8a8,w8a8+mha,fp32+mha`)"),
    ("export_unet_unrolled.json", "FP32 export of the SD1.5-sized UNet unrolled over 4 steps (`python benchmarks/export_unet.py --schemes fp32 --runs 1 --unrolled 4`)"),
    ("export_sample.json", "Export size and ONNX Runtime CPU latency: embedded sample"),
    ("runtime_sample.json", "Embedded sample on ONNX Runtime CPU: latency and parity of built artifacts (`python benchmarks/runtime_latency.py out/shapes-sd-onnxruntime-{fp32,w8a8,w4a8} --repeats 20`, 2-core CPU)"),
    ("calibration_speed_cpu.json", "Calibration speed (CPU)"),
    ("calibration_speed_gpu.json", "Calibration speed (GPU)"),
    ("calibration_scaling.json", "Sharded calibration on several GPUs (torch.distributed, nccl): the embedded sample"),
    ("calibration_scaling_sd15.json", "Sharded calibration on several GPUs (torch.distributed, nccl): SD1.5-sized UNet + VAE, random weights"),
)


# The size goals of the SDXL issue, per target form: INT8 Q/DQ, INT4 for ONNX Runtime, INT4 blocks for TensorRT.
SIZE_GOALS = {"w8a8": 0.27, "w4a8": 0.15, "w4a16": 0.23}


def backbone_export_section(data: dict) -> str:
    """Full-size export of a new backbone (benchmarks/backbone_export.py): one row per scheme."""
    full_flux = data["backbone"] == "flux" and (data["double"], data["single"]) == (19, 38)
    what = {"sdxl": "SDXL UNet (SDXL-base architecture)",
            "flux": "FLUX.1 transformer at full size (19 + 38 blocks)" if full_flux else "FLUX.1 transformer at full width, reduced depth"}[data["backbone"]]
    size = data.get("size", 1024)
    commands = data.get("runs", [data["command"]])
    out = [f"## Full-size export: {what}, random weights ({data['parameters'] / 1e9:.2f} B parameters)", "",
           " then ".join(f"`{c}`" for c in commands) + (f" on {data['cpu']} ({data['threads']} threads), torch {data['torch']}" if "cpu" in data else "")
           + "; "
           f"one step unrolled, batch 1, {size}x{size} px"
           + (f", the model made and saved in {data['model_dtype'].upper()}" if data.get("model_dtype", "fp32") != "fp32" else "")
           + ". Export time includes the PyTorch references (`jobs`: exports run at once, "
           "sharing the cores); latency is ONNX Runtime CPU (extended optimizations), best of the runs, timed alone.", ""]
    if "cut_short" in data:
        out += [f"**Cut short:** {data['cut_short']}", ""]
    if "peak_rss_note" in data:
        out += [f"Peak RSS marked ≤: {data['peak_rss_note']}", ""]
    for key, label in (("size_note", "Image size"), ("machine_memory", "Memory and disk"), ("concurrent", "Sharing")):
        if key in data:
            out += [f"**{label}:** {data[key]}", ""]
    rows = []
    for r in data["rows"]:
        if "denoise_bytes" not in r:
            rows.append([r["scheme"], "not run: " + r.get("not_run", r.get("failed", "?"))] + [""] * 9)
            continue
        rss = f"{r['peak_rss_gib']:.1f}" if "peak_rss_gib" in r else f"≤ {r['peak_rss_gib_bound']:.1f}"
        goal = SIZE_GOALS.get(r["scheme"]) if data["backbone"] == "sdxl" else None
        ratio = r.get("size_vs_fp32")  # absent without an fp32 row
        size = "-" if ratio is None else f"{ratio:.3f}x" + (f" ({'meets' if ratio <= goal else 'misses'} ≤ {goal}x)" if goal else "")
        rows.append([r["scheme"], str(r.get("jobs", 1)), f"{r['export_seconds']:.0f}", f"{r['denoise_bytes'] / 1e9:.2f}", size,
                     f"{r['seconds_per_step']:.2f}" if "seconds_per_step" in r else "not timed",
                     f"{r['cosine_vs_fp32']:.5f}" if "cosine_vs_fp32" in r else "-", rss,
                     str(r.get("flux1_export_seconds_extrapolated", "")), str(r.get("flux1_denoise_gb_extrapolated", "")),
                     f"{r['flux1_size_vs_fp32_extrapolated']:.3f}x" if "flux1_size_vs_fp32_extrapolated" in r else ""])
    headers = ["scheme", "jobs", "export s", "denoise GB", "size vs FP32 (goal)", "ORT CPU s/step", "cosine vs FP32", "peak RSS GiB"]
    if data["backbone"] == "flux" and not full_flux:
        out += [f"Extrapolated to FLUX.1's 19 + 38 blocks: {data['flux1_parameters_extrapolated'] / 1e9:.2f} B parameters "
                f"({data['flux1_scale']}x this model).", ""]
        headers += ["FLUX.1 export s (extrapolated)", "FLUX.1 denoise GB (extrapolated)", "FLUX.1 size vs FP32 (extrapolated)"]
    out.append(_table(headers, [r[:len(headers)] for r in rows]))
    return "\n".join(out)


def main() -> None:
    parts = ["# Results", "", "Generated by `python benchmarks/report.py` from `benchmarks/results/*.json`; "
             "each section names the command that measured it. Do not edit by hand.", ""]
    quality = _load("quality.json")
    if quality:
        parts.append(quality_section(quality, "Quality on the embedded sample"))
        quality_plot(quality, DOCS / "results_quality.png")
        parts += ["", "![quality](results_quality.png)", ""]
        if (DOCS / "quality_grid.png").is_file():
            parts += ["![grid](quality_grid.png)", ""]
    for name, title in (("quality_study.json", "Where quantization loss starts: study-only schemes (3-bit weights, 6-bit activations)"),
                        ("quality_wide_range.json", "Q-Sched with a wider search range (ramp starts 0.6-1.4)")):
        data = _load(name)
        if data:
            parts += [quality_section(data, title), ""]
    flux = _load("quality_flux.json")
    if flux:
        parts += [quality_section(flux, "Quality on the FLUX-architecture sample (samples/shapes-flux, flow-match Euler)"), ""]
        if (DOCS / "quality_flux_grid.png").is_file():
            parts += ["![flux quality grid](quality_flux_grid.png)", ""]
    for name in ("backbone_export_sdxl.json", "backbone_export_flux.json", "backbone_export_flux12b.json"):
        data = _load(name)
        if data:
            parts += [backbone_export_section(data), ""]
    if (DOCS / "arm64_rehearsal.md").is_file():
        parts += ["## The Jetson path rehearsed on arm64 (emulated)", "", "See [arm64_rehearsal.md](arm64_rehearsal.md) "
                  "(`tools/arm64_rehearsal.sh`: parity on aarch64 under qemu; timings there are not benchmarks).", ""]
    gpu = _load("gpu_latency.json")
    if gpu:
        parts += [gpu_section(gpu), ""]
    for name, title in SECTIONS:
        data = _load(name)
        if data:
            parts += [generic_section(title, data), ""]
    DOCS.mkdir(exist_ok=True)
    (DOCS / "RESULTS.md").write_text("\n".join(parts) + "\n")
    print(f"wrote {DOCS / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
