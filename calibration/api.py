"""`calibrate(CalibrationConfig) -> QSchedFile`: the Python API behind `qsched-export calibrate`.

Per scheme: a copy of the UNet is fake-quantized, its static activation ranges are observed on
the calibration prompts along the FP32 sampler trajectory (all coefficients 1), and the
coefficient search runs on the quantized sampler. The result is merged into qsched.json, written
atomically only after every scheme succeeded, so any error leaves the previous file intact.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from calibration.search import Evaluator, SearchSpace, coefficients, edge_message, grid_search, save_heatmap
from qsched_export.errors import QSchedError
from qsched_export.qsched_file import QSchedFile, SchemeEntry, read_qsched, write_qsched
from qsched_export.quant import activation_ranges, get_scheme, observe_ranges, quantize_model

log = logging.getLogger("calibration")

REPO = Path(__file__).resolve().parents[1]
SAMPLE_PROMPTS = REPO / "samples" / "prompts" / "calibration.txt"
SAMPLE_JUDGE = REPO / "samples" / "judges" / "shapes-clip-a"
# `--bits` for calibration: what `build --target onnxruntime` means by it.
BITS_TO_SCHEME = {8: "w8a8", 4: "w4a8", 16: "fp16"}


def default_judge(model: str | None) -> str:
    """The embedded sample is judged by its own CLIP (trained with it); other models by ViT-L-14."""
    from calibration.judges import DEFAULT_CLIP

    return str(SAMPLE_JUDGE) if model is None and SAMPLE_JUDGE.is_dir() else DEFAULT_CLIP


@dataclass(frozen=True)
class CalibrationConfig:
    """Everything one calibration run needs.

    Args:
        model: diffusers folder or hub id; None = the embedded sample.
        schemes: scheme names to calibrate (see qsched_export.quant.SCHEMES); `from_bits` maps --bits.
        steps: sampler steps. prompts_file: one prompt a line (None = samples/prompts/calibration.txt).
        space: the grid. refine: refine the four ramp ends after the grid. k: JAQ's CLIP-IQA weight.
        judge: open_clip folder or NAME[@PRETRAINED] (None = the sample's judge for the sample, else ViT-L-14@openai).
        guidance: classifier-free guidance scale (None = qsched_export.pipeline.default_guidance: 1.5 for the embedded sample, else 7.5). seed: noise seed. percentile: activation range percentile (None = amax).
        out: qsched.json path. heatmap: PNG path (one per scheme: `<stem>-<scheme>.png` when several).
        nproc: processes to shard the grid over (torch.distributed). device: "cpu" or "cuda".
        batch_size: images per denoiser call. progress: show progress bars.
    """

    model: str | None = None
    schemes: tuple[str, ...] = ("w8a8",)
    steps: int = 4
    prompts_file: Path | None = None
    space: SearchSpace = field(default_factory=SearchSpace)
    refine: bool = True
    k: float = 2.0
    judge: str | None = None
    guidance: float | None = None
    seed: int = 0
    percentile: float | None = None
    out: Path = Path("qsched.json")
    heatmap: Path | None = None
    nproc: int = 1
    device: str = "cpu"
    batch_size: int = 64
    progress: bool = True

    @staticmethod
    def bits_to_schemes(bits: list[int]) -> tuple[str, ...]:
        bad = [b for b in bits if b not in BITS_TO_SCHEME]
        if bad:
            hint = " (32 is full precision: there is nothing to calibrate)" if 32 in bad else ""
            raise QSchedError(f"bits must be 4, 8 or 16, got {bad[0]}{hint}", "pass --bits 8 and/or --bits 4, or --scheme NAME")
        return tuple(BITS_TO_SCHEME[b] for b in bits)

    def prompts_path(self) -> Path:
        return Path(self.prompts_file) if self.prompts_file is not None else SAMPLE_PROMPTS

    def read_prompts(self) -> list[str]:
        path = self.prompts_path()
        if not path.is_file():
            raise QSchedError(f"prompt file {path} not found", "pass --prompts FILE with one prompt a line")
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
        if not prompts:
            raise QSchedError(f"prompt file {path} has no prompts", "write one prompt a line (the paper uses 5 to 25)")
        return prompts

    @property
    def guidance_scale(self) -> float:
        if self.guidance is not None:
            return float(self.guidance)
        from qsched_export.pipeline import default_guidance

        return default_guidance(self.model)

    def validate(self) -> "CalibrationConfig":
        if not self.schemes:
            raise QSchedError("no scheme to calibrate", "pass --bits 8 and/or --bits 4, or --scheme NAME")
        for name in self.schemes:
            if get_scheme(name).name == "fp32":
                raise QSchedError("fp32 has nothing to calibrate", "pass --bits 8, 4 or 16")
        if not (self.guidance_scale >= 0 and math.isfinite(self.guidance_scale)):
            raise QSchedError(f"guidance must be a finite number >= 0, got {self.guidance}", "pass e.g. --guidance 3")
        if self.steps < 1:
            raise QSchedError(f"steps must be >= 1, got {self.steps}", "pass --steps 4")
        self.space.validate()
        if not (self.k >= 0):
            raise QSchedError(f"k must be >= 0, got {self.k}", "pass --k 2 (the paper's value)")
        if self.nproc < 1:
            raise QSchedError(f"nproc must be >= 1, got {self.nproc}", "pass --nproc 1 or more")
        if self.batch_size < 1:
            raise QSchedError(f"batch size must be >= 1, got {self.batch_size}", "pass a positive batch size")
        if self.device not in ("cpu", "cuda"):
            raise QSchedError(f"device must be cpu or cuda, got {self.device!r}", "pass --device cpu or cuda")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise QSchedError("--device cuda but no CUDA device is visible", "run on a GPU machine or pass --device cpu")
        if self.device == "cuda" and self.nproc > torch.cuda.device_count():
            raise QSchedError(f"nproc {self.nproc} exceeds the {torch.cuda.device_count()} visible GPUs", f"pass --nproc {torch.cuda.device_count()}")
        self.read_prompts()
        return self


class HalfPrecisionUNet(torch.nn.Module):
    """Runs a UNet in float16 with float32 inputs and outputs: the fp16 scheme's simulation."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet.half()
        self.config = unet.config

    def forward(self, sample, timestep, encoder_hidden_states, timestep_cond=None, return_dict=False):
        out = self.unet(sample.half(), timestep, encoder_hidden_states=encoder_hidden_states.half(),
                        timestep_cond=None if timestep_cond is None else timestep_cond.half(), return_dict=False)[0]
        return (out.float(),)


def _model_id(model: str | None) -> str:
    return "samples/shapes-sd" if model is None else str(model)


def _compatible_existing(config: CalibrationConfig, family: str) -> dict:
    """Schemes already in `config.out` (kept on merge); a file for another model/steps/guidance is an error."""
    if not Path(config.out).is_file():
        return {}
    prev = read_qsched(config.out)
    mismatch = [f"{k} {a!r} != {b!r}" for k, a, b in (("model", prev.model, _model_id(config.model)), ("steps", prev.steps, config.steps),
                                                     ("family", prev.family, family), ("guidance", prev.guidance_scale, config.guidance_scale)) if a != b]
    if mismatch:
        raise QSchedError(f"{config.out} holds a calibration for another setting ({'; '.join(mismatch)})", "pass another --out, or delete the old file")
    return dict(prev.schemes)


def calibrate(config: CalibrationConfig) -> QSchedFile:
    """Calibrate every scheme in `config`, write qsched.json (merged) and return it."""
    config.validate()
    import torch.distributed as dist

    if config.nproc > 1 and not (dist.is_available() and dist.is_initialized()):
        return _spawn(config)
    return _calibrate(config)


def _device(config: CalibrationConfig) -> torch.device:
    import torch.distributed as dist

    if config.device == "cuda":
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        return torch.device("cuda", rank % torch.cuda.device_count())
    return torch.device("cpu")


@dataclass
class Session:
    """What every scheme of one run shares: the pipeline, the encoded prompts, the fixed noise and
    the objective (built once)."""

    config: CalibrationConfig
    pipe: object
    family: str
    plan: object
    prompts: list[str]
    cond: object
    latents: torch.Tensor
    noises: list
    objective: object
    device: torch.device

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        from qsched_export.pipeline import decode_latents

        return decode_latents(self.pipe, latents)

    def evaluator(self, unet, batch_size: int | None = None) -> Evaluator:
        from qsched_export.pipeline import UNetDenoiser

        return Evaluator(UNetDenoiser(unet, self.config.guidance_scale), self.decode, self.plan, self.cond, self.latents, self.noises,
                         self.objective, self.prompts, batch_size or self.config.batch_size)

    @torch.no_grad()
    def fp32_trajectory(self, unet) -> None:
        """Run `unet` along the sampler with all coefficients 1 on the calibration prompts and noise
        (what range observers watch)."""
        from qsched_export.pipeline import UNetDenoiser, denoise_fn
        from qsched_export.sampler import sample_loop

        sample_loop(denoise_fn(UNetDenoiser(unet, self.config.guidance_scale), self.cond), self.plan, self.latents, self.noises)

    def simulated_unet(self, scheme_name: str, unet=None):
        """A fake-quant UNet for `scheme_name`, static ranges observed along the FP32 sampler
        trajectory on the calibration prompts; returns (unet, report). `unet`: a float copy to
        quantize in place (e.g. one SmoothQuant has smoothed), default a copy of the pipeline's."""
        scheme = get_scheme(scheme_name)
        unet = copy.deepcopy(self.pipe.unet) if unet is None else unet
        if scheme.float_dtype == "float16":
            unet = HalfPrecisionUNet(unet)
        report = quantize_model(unet, scheme)
        if scheme.static_activations:
            with observe_ranges(unet, self.config.percentile):
                self.fp32_trajectory(unet)
        return unet, report


def prepare(config: CalibrationConfig) -> Session:
    """Load the pipeline and judge, encode the prompts once and draw the noise once (seeded)."""
    from calibration.jaq import JAQ
    from calibration.judges import load_clip
    from qsched_export.pipeline import Conditioning, draw_noise, encode_prompts, latent_shape, load_pipeline
    from qsched_export.sampler import family_for_scheduler, make_plan

    prompts = config.read_prompts()
    device = _device(config)
    pipe = load_pipeline(config.model)
    family = family_for_scheduler(pipe.scheduler).NAME
    objective = JAQ.from_clip(load_clip(config.judge or default_judge(config.model), device=device), config.k)
    plan = make_plan(pipe.scheduler, config.steps)
    cond = encode_prompts(pipe, prompts, config.guidance_scale)
    cond = Conditioning(cond.context.to(device), None if cond.timestep_cond is None else cond.timestep_cond.to(device), cond.batch_size)
    latents, noises = draw_noise(plan, latent_shape(pipe, len(prompts), None, None), torch.Generator().manual_seed(config.seed))
    latents, noises = latents.to(device), [None if n is None else n.to(device) for n in noises]
    pipe.vae.to(device)
    pipe.unet.to(device)
    return Session(config, pipe, family, plan, prompts, cond, latents, noises, objective, device)


def _calibrate(config: CalibrationConfig) -> QSchedFile:
    import torch.distributed as dist

    from qsched_export.sampler import QSchedCoefficients

    sharded = dist.is_available() and dist.is_initialized()
    rank0, world = (dist.get_rank() == 0, dist.get_world_size()) if sharded else (True, 1)
    session = prepare(config)
    previous = _compatible_existing(config, session.family)  # fail before the long work, not after
    ones = QSchedCoefficients.ones(session.plan.num_steps)
    fp32 = {k: float(v[0]) for k, v in session.evaluator(session.pipe.unet).evaluate([ones]).items()}
    entries: dict[str, SchemeEntry] = {}
    for name in config.schemes:
        started = time.perf_counter()
        unet, report = session.simulated_unet(name)
        ev = session.evaluator(unet)
        naive = {k: float(v[0]) for k, v in ev.evaluate([ones]).items()}
        result = grid_search(ev, config.space, refine=config.refine, progress=config.progress and rank0)
        seconds = time.perf_counter() - started
        if rank0:
            message = edge_message(result)
            if message:
                log.warning("%s: %s", name, message)
            if config.heatmap is not None:
                save_heatmap(result, _heatmap_path(config, name), f"{name}: JAQ over ramp starts ({_model_id(config.model)}, {config.steps} steps)")
        entries[name] = SchemeEntry(
            coefficients=coefficients(result.best, session.plan.num_steps),
            ramp={"latent_coeff": [result.best[0], result.best[1]], "output_coeff": [result.best[2], result.best[3]]},
            jaq={"fp32": fp32, "naive": naive, "qsched": result.best_terms, "objective": session.objective.name, "k": config.k},
            search={**result.to_dict(), "refine": config.refine, "prompts": session.prompts, "seed": config.seed, "percentile": config.percentile,
                    "denoiser_calls": ev.denoiser_calls, "seconds": round(seconds, 3), "processes": world, "device": str(session.device),
                    "quantization": {**report.to_dict(), "scheme": get_scheme(name).to_dict()}},
            activation_ranges=activation_ranges(unet),
        )
    qfile = QSchedFile(_model_id(config.model), session.family, config.steps, config.guidance_scale, {**previous, **entries},
                       {"sampler_plan": session.plan.to_dict()})
    if rank0:
        write_qsched(config.out, qfile)
    return qfile


def _heatmap_path(config: CalibrationConfig, scheme: str) -> Path:
    path = Path(config.heatmap)
    return path if len(config.schemes) == 1 else path.with_name(f"{path.stem}-{scheme}{path.suffix}")


def _worker(rank: int, config: CalibrationConfig, init_file: str, result_file: str) -> None:
    import torch.distributed as dist

    backend = "nccl" if config.device == "cuda" else "gloo"
    if config.device == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    else:
        # Share the cores: nproc processes each using every core thrash the CPU.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // config.nproc))
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=config.nproc)
    try:
        _calibrate(config)
        if rank == 0:
            Path(result_file).write_text("ok")
    finally:
        dist.destroy_process_group()


def _spawn(config: CalibrationConfig) -> QSchedFile:
    """Run `_calibrate` in `nproc` processes (one per GPU with cuda): rank 0 writes qsched.json."""
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="qsched-dist-") as tmp:
        init_file, result_file = os.path.join(tmp, "init"), os.path.join(tmp, "done")
        try:
            mp.spawn(_worker, args=(config, init_file, result_file), nprocs=config.nproc, join=True)
        except mp.ProcessRaisedException as exc:
            text = str(exc)
            if "QSchedError" in text:
                line = [ln for ln in text.splitlines() if "QSchedError" in ln][-1]
                raise QSchedError(f"a calibration process failed: {line.split('QSchedError:', 1)[-1].strip()}") from None
            raise
        if not os.path.exists(result_file):
            raise QSchedError("the calibration processes ended without a result", "rerun with --nproc 1 to see the error")
    return read_qsched(config.out)
