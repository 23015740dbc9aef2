"""PyTorch latency on a GPU (issue 8), all measured in one process on one device:

1. the embedded sample end to end: text encoder, 4 Q-Sched steps (its shipped w8a8 coefficients)
   with CFG at guidance 1.5, VAE decode; FP32 and FP16, at batch 1 and a large batch;
2. an SD1.5-sized UNet2DConditionModel with random weights (64x64 latent = 512x512 image): one
   denoiser call (UNet batch 2: one image with CFG), the 4-step sample loop, and the decode of an
   SD1.5-sized AutoencoderKL (random weights), timed separately; FP32 and FP16;
3. calibration speed on that model through the real calibration path (CalibrationConfig ->
   prepare -> Session.evaluator): Q-Sched grid points per second of the batched search, FP32 and
   the w8a8 fake-quant simulation, extrapolated to a 20x20 grid + refinement.

FP16 is the package's fp16 numerics (calibration.api.HalfPrecisionUNet: the UNet runs in half with
float32 inputs and outputs, so the sampler arithmetic stays float32); the text encoder and VAE are
cast to half. A latency is the median of synchronised wall times after warm-up runs.

Our quantized GPU runtime is TensorRT, which cannot be installed in this workplace, so no quantized
GPU latency is measured; the w8a8 calibration row is the fake-quant simulation, not deployment.

    python benchmarks/gpu_latency.py --device cuda --out benchmarks/results/gpu_latency.json
    OMP_NUM_THREADS=1 python benchmarks/gpu_latency.py --device cpu --quick --out /tmp/gpu_latency_quick.json

The second is a smoke run of every code path (about a minute on 2 cores); one OpenMP thread because
on a busy shared CPU two spinning threads made it three times slower.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import diffusers
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.calibration_speed import describe_device, open_session, timed  # noqa: E402
from benchmarks.export_unet import build_sd15_pipeline  # noqa: E402
from calibration.api import SAMPLE_JUDGE  # noqa: E402
from calibration.search import SearchSpace, coefficients, grid_search  # noqa: E402
from qsched_export.backbones import Backbone, Conditioning, HalfPrecision  # noqa: E402
from qsched_export.pipeline import SAMPLE_MODEL, denoise_fn, draw_noise, open_backbone  # noqa: E402
from qsched_export.qsched_file import read_qsched  # noqa: E402
from qsched_export.sampler import QSchedCoefficients, SamplerPlan, sample_loop  # noqa: E402
from runtimes.files import atomic_file  # noqa: E402
from qsched_export.testing import save_tiny_sd  # noqa: E402

STEPS = 4
GUIDANCE = 1.5
PROMPT = "two small red circles on a blue background"
PAPER_MINUTES = 20.0  # Q-Sched (arXiv 2509.01624): about 20 minutes per calibration on an A6000
NOTE = ("Our quantized GPU runtime is TensorRT, which cannot be installed in this workplace: no quantized GPU latency is measured. "
        "The w8a8 calibration row runs the fake-quant simulation (float kernels plus quantize-dequantize), not a deployment runtime.")


@dataclass(frozen=True)
class Sizes:
    """What one run measures.

    Args:
        sample_batches: images per end-to-end call of the embedded sample.
        build_model: writes the part 2/3 pipeline folder (UNet, scheduler, text encoder, tokenizer).
        vae_channels, vae_layers: `block_out_channels` and `layers_per_block` of the VAE swapped into it.
        calib_prompts: calibration prompts. calib_batch: images per denoiser call (CalibrationConfig.batch_size).
        calib_chunks: timed evaluator chunks per UNet, after one warm-up chunk.
        warmup, runs: untimed and timed runs per latency row (the median is reported).
    """

    sample_batches: tuple[int, ...]
    build_model: Callable[[Path], Path]
    vae_channels: tuple[int, ...]
    vae_layers: int
    calib_prompts: int
    calib_batch: int
    calib_chunks: int
    warmup: int
    runs: int


# The GPU run: SD1.5's UNet (via export_unet) and VAE shapes. Calibration batch 32 = 4 candidates x 8
# prompts per call keeps the fake-quant UNet (batch 64 with CFG) and 32 decodes at 512x512 well inside
# 80 GB; one such chunk is seconds of steady GPU work, so one timed chunk keeps the run within minutes.
FULL = Sizes(sample_batches=(1, 64), build_model=build_sd15_pipeline, vae_channels=(128, 256, 512, 512), vae_layers=2,
             calib_prompts=8, calib_batch=32, calib_chunks=1, warmup=3, runs=10)
# A CPU smoke run of every code path: the tests' tiny UNet (8x8 latent), a narrow 4-block VAE (64x64 image);
# one sample batch, since fp16 runs on reference kernels on a CPU (the sample's fp16 decode is seconds).
QUICK = Sizes(sample_batches=(2,), build_model=save_tiny_sd, vae_channels=(32, 32, 32, 32), vae_layers=1,
              calib_prompts=2, calib_batch=4, calib_chunks=1, warmup=1, runs=2)


@dataclass
class Recorder:
    """Times latency rows on one device and keeps them (flat dicts, one key set: benchmarks/report.py tables them)."""

    device: str
    sizes: Sizes
    rows: list[dict] = field(default_factory=list)

    def time(self, part: int, model: str, what: str, dtype: str, batch: int, image: tuple[int, int], fn: Callable[[], object]) -> None:
        reset_peak(self.device)
        for _ in range(self.sizes.warmup):
            fn()
        times = [timed(fn, self.device)[1] for _ in range(self.sizes.runs)]
        median = statistics.median(times)
        self.rows.append({"part": part, "model": model, "measure": what, "dtype": dtype, "batch": batch, "image": f"{image[0]}x{image[1]}",
                          "median_s": median, "s_per_image": median / batch, "peak_mem_mib": peak_mib(self.device),
                          "device": describe_device(self.device), "torch": torch.__version__, "runs_s": [round(t, 5) for t in times]})


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_mib(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if device == "cuda" else None


def free_memory(device: str) -> None:
    """Drop the previous part's models, so each part's memory peak is its own."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def describe_model(module: torch.nn.Module) -> str:
    return f"{type(module).__name__} ({sum(p.numel() for p in module.parameters()) / 1e6:.1f}M)"


def image_size(backbone: Backbone) -> tuple[int, int]:
    return backbone.height, backbone.width


def denoiser_for(backbone: Backbone, dtype: str) -> torch.nn.Module:
    """The CFG denoiser in `dtype`. fp16 casts the text encoder and VAE to half and runs the UNet as
    the package's fp16 scheme does (`HalfPrecision`: half inside, float32 in and out, sampler math in float32)."""
    if dtype == "fp32":
        return backbone.denoiser()
    backbone.pipe.text_encoder.half()
    backbone.pipe.vae.half()
    return backbone.denoiser(HalfPrecision(backbone.pipe.unet))


def noise(backbone: Backbone, plan: SamplerPlan, batch: int, device: str) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """The seeded noise, drawn once outside the timing (as the package draws it: on the CPU)."""
    latents, noises = draw_noise(plan, backbone.latent_shape(batch), torch.Generator().manual_seed(0))
    return latents.to(device), [None if n is None else n.to(device) for n in noises]


def sample(denoiser: torch.nn.Module, cond: Conditioning, plan: SamplerPlan, latents: torch.Tensor, noises: list,
           coeffs: QSchedCoefficients) -> torch.Tensor:
    return sample_loop(denoise_fn(denoiser, cond), plan, latents, noises, coeffs.latent_coeff, coeffs.output_coeff)


@torch.no_grad()
def sample_rows(rec: Recorder, coeffs: QSchedCoefficients) -> None:
    """Part 1: the embedded sample end to end, as qsched_export.pipeline.generate does it, on the device."""
    backbone = open_backbone(None, guidance=GUIDANCE)
    backbone.pipe.to(rec.device)
    plan = backbone.plan(STEPS)
    model = f"samples/shapes-sd, {describe_model(backbone.pipe.unet)}"
    for dtype in ("fp32", "fp16"):
        denoiser = denoiser_for(backbone, dtype)
        for batch in rec.sizes.sample_batches:
            latents, noises = noise(backbone, plan, batch, rec.device)
            prompts = [PROMPT] * batch

            def generate() -> torch.Tensor:
                final = sample(denoiser, backbone.encode(prompts, rec.device), plan, latents, noises, coeffs)
                return backbone.decode(final.to(backbone.pipe.vae.dtype))

            rec.time(1, model, f"text encoder + {STEPS} steps (CFG) + VAE decode", dtype, batch, image_size(backbone), generate)


def build_model(folder: Path, sizes: Sizes) -> Path:
    """The part 2/3 pipeline folder: `sizes.build_model`'s pipeline with an AutoencoderKL of
    `sizes.vae_channels` (random weights) saved over its VAE, so calibration loads it like any model."""
    from diffusers import AutoencoderKL

    sizes.build_model(folder)
    blocks = len(sizes.vae_channels)
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=sizes.vae_channels, layers_per_block=sizes.vae_layers, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    return folder


@torch.no_grad()
def unet_rows(rec: Recorder, folder: Path, coeffs: QSchedCoefficients) -> None:
    """Part 2: one denoiser call, the sample loop and the VAE decode of the part 2/3 model, one image."""
    backbone = open_backbone(str(folder), guidance=GUIDANCE)
    backbone.pipe.to(rec.device)
    plan = backbone.plan(STEPS)
    latents, noises = noise(backbone, plan, 1, rec.device)
    unet, vae, image = describe_model(backbone.pipe.unet), describe_model(backbone.pipe.vae), image_size(backbone)
    for dtype in ("fp32", "fp16"):
        denoiser = denoiser_for(backbone, dtype)
        cond = backbone.encode([PROMPT], rec.device)
        call = denoise_fn(denoiser, cond)
        rec.time(2, unet, "denoiser call (UNet batch 2, CFG)", dtype, 1, image, lambda: call(latents, plan.timesteps[0], 0))
        rec.time(2, unet, f"{STEPS}-step loop (CFG), no decode", dtype, 1, image, lambda: sample(denoiser, cond, plan, latents, noises, coeffs))
        rec.time(2, vae, "VAE decode", dtype, 1, image, lambda: backbone.decode(latents.to(backbone.pipe.vae.dtype)))


def search_evaluations(plan: SamplerPlan) -> int:
    """Candidates grid_search scores on the default 20x20 grid with refinement, counted by running it
    on an evaluator that returns random scores (the count does not depend on them)."""

    class Counting:
        per_call = 1 << 20

        def __init__(self) -> None:
            self.plan = plan

        def _evaluate_chunk(self, candidates: list) -> dict[str, torch.Tensor]:
            return {"jaq": torch.rand(len(candidates), dtype=torch.float64)}

    return grid_search(Counting(), SearchSpace(), progress=False).evaluations


def calibration_rows(device: str, sizes: Sizes, folder: Path, work: Path) -> list[dict]:
    """Part 3: grid points per second of the batched evaluator, FP32 and w8a8 fake-quant, timed on a
    few chunks after a warm-up chunk and extrapolated to a full search."""
    session = open_session(str(folder), str(SAMPLE_JUDGE), sizes.calib_prompts, work, schemes=("w8a8",), steps=STEPS, guidance=GUIDANCE,
                           device=device, batch_size=sizes.calib_batch)
    candidates = [coefficients(p, session.plan.num_steps) for p in session.config.space.points()]
    evaluations = search_evaluations(session.plan)
    model = f"{describe_model(session.backbone.model)} + {describe_model(session.backbone.pipe.vae)}"
    rows = []
    for unet_name, make_unet in (("fp32", lambda: session.backbone.model), ("w8a8 fake-quant (simulation)", lambda: session.simulated_model("w8a8")[0])):
        reset_peak(device)
        # What a search pays once per scheme: the fake-quant copy with its observed activation ranges,
        # and the evaluator's first step (coefficient-independent, run once).
        evaluator, setup_s = timed(lambda: session.evaluator(make_unet()), device)
        chunk = evaluator.per_call
        evaluator.evaluate(candidates[:chunk])  # warm-up, untimed
        points = candidates[chunk:chunk * (1 + sizes.calib_chunks)]
        _, seconds = timed(lambda: evaluator.evaluate(points), device)
        per_second = len(points) / seconds
        search_minutes = (setup_s + evaluations / per_second) / 60
        rows.append({"model": model, "unet": unet_name, "simulation": unet_name != "fp32", "prompts": len(session.prompts), "steps": STEPS,
                     "guidance": GUIDANCE, "images_per_call": chunk * len(session.prompts), "candidates_per_call": chunk, "points_timed": len(points),
                     "seconds": seconds, "points_per_second": per_second, "setup_s": setup_s, "search_evaluations": evaluations,
                     "search_minutes_extrapolated": search_minutes, "paper_minutes_a6000": PAPER_MINUTES, "peak_mem_mib": peak_mib(device),
                     "device": describe_device(device), "torch": torch.__version__})
    return rows


def print_tables(report: dict) -> None:
    """One narrow table per part: the output is often captured, where rich assumes 80 columns."""
    from rich.console import Console
    from rich.table import Table

    def mib(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    console = Console()
    runs = f"median of {report['settings']['runs']} runs after {report['settings']['warmup']} warm-up"
    part1 = [r for r in report["rows"] if r["part"] == 1]
    table = Table(title=f"Part 1: {part1[0]['model']}, {part1[0]['measure']}, {part1[0]['image']} ({runs})")
    for col in ("dtype", "batch", "s / batch", "s / image", "peak MiB"):
        table.add_column(col, justify="left" if col == "dtype" else "right")
    for r in part1:
        table.add_row(r["dtype"], str(r["batch"]), f"{r['median_s']:.4f}", f"{r['s_per_image']:.4f}", mib(r["peak_mem_mib"]))
    console.print(table)
    part2 = [r for r in report["rows"] if r["part"] == 2]
    table = Table(title=f"Part 2: random weights, one {part2[0]['image']} image ({runs})")
    for col in ("model", "measure", "dtype", "s", "peak MiB"):
        table.add_column(col, justify="right" if col in ("s", "peak MiB") else "left")
    for r in part2:
        table.add_row(r["model"], r["measure"], r["dtype"], f"{r['median_s']:.4f}", mib(r["peak_mem_mib"]))
    console.print(table)
    cal = report["calibration"]
    table = Table(title=f"Part 3: calibration speed, {cal[0]['model']}, {cal[0]['prompts']} prompts, {STEPS} steps, CFG, "
                        f"{cal[0]['images_per_call']} images per call; search = {cal[0]['search_evaluations']} evaluations "
                        f"(20x20 grid + refinement), paper ~{PAPER_MINUTES:g} min on an A6000")
    for col in ("unet", "points timed", "points / s", "setup s", "search min", "peak MiB"):
        table.add_column(col, justify="left" if col == "unet" else "right")
    for r in cal:
        table.add_row(r["unet"], str(r["points_timed"]), f"{r['points_per_second']:.3f}", f"{r['setup_s']:.2f}",
                      f"{r['search_minutes_extrapolated']:.2f}", mib(r["peak_mem_mib"]))
    console.print(table)
    console.print(f"Note: {NOTE}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--quick", action="store_true",
                   help="smoke-run sizes: a tiny UNet and VAE, sample batch 2, 2 calibration prompts, 1 warm-up + 2 timed runs")
    p.add_argument("--out", type=Path, required=True, help="write the results as JSON here")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA device is visible; for a smoke run pass --device cpu --quick")
    sizes = QUICK if args.quick else FULL
    coeffs = read_qsched(SAMPLE_MODEL / "qsched.json").scheme("w8a8").coefficients
    rec = Recorder(args.device, sizes)
    start = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[{time.perf_counter() - start:5.0f} s] {message}", flush=True)

    with tempfile.TemporaryDirectory(prefix="gpu-latency-") as tmp:
        progress("part 1: the embedded sample end to end")
        sample_rows(rec, coeffs)
        free_memory(args.device)
        progress("building the part 2/3 model")
        folder = build_model(Path(tmp) / "model", sizes)
        progress("part 2: UNet, sample loop, VAE decode")
        unet_rows(rec, folder, coeffs)
        free_memory(args.device)
        progress("part 3: calibration speed")
        calibration = calibration_rows(args.device, sizes, folder, Path(tmp))
        progress("done")
    report = {
        "title": "PyTorch latency and calibration speed" + (" (--quick smoke sizes)" if args.quick else ""),
        "command": "python benchmarks/gpu_latency.py " + " ".join(sys.argv[1:]),
        "device": describe_device(args.device),
        "note": NOTE,
        "settings": {"steps": STEPS, "guidance": GUIDANCE, "prompt": PROMPT, "coefficients": "samples/shapes-sd/qsched.json w8a8",
                     "warmup": sizes.warmup, "runs": sizes.runs, "quick": args.quick},
        # FP32 runs at torch's default float32 settings, recorded here (cuDNN convolutions default to TF32).
        "environment": {"python": platform.python_version(), "diffusers": diffusers.__version__, "torch_cuda": torch.version.cuda,
                        "cudnn": torch.backends.cudnn.version(), "cudnn_benchmark": torch.backends.cudnn.benchmark,
                        "matmul_fp32_precision": torch.backends.cuda.matmul.fp32_precision,
                        "conv_fp32_precision": torch.backends.cudnn.conv.fp32_precision},
        "rows": rec.rows,
        "calibration": calibration,
    }
    print_tables(report)
    with atomic_file(args.out) as f:
        f.write(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
