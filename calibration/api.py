"""`calibrate(CalibrationConfig) -> QSchedFile`: the Python API behind `qsched-export calibrate`.

Per scheme: a copy of the backbone model is fake-quantized (`Backbone.scheme_model`, the numerics
the exporter emits), its static activation ranges are observed on the calibration prompts along
the FP32 sampler trajectory (all coefficients 1), and the coefficient search runs on the quantized
sampler. The result is merged into qsched.json, written atomically only after every scheme
succeeded, so any error leaves the previous file intact.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from calibration.search import Evaluator, SearchSpace, coefficients, edge_message, grid_search, save_heatmap
from qsched_export.errors import QSchedError
from qsched_export.lora import LoraSpec
from qsched_export.qsched_file import QSchedFile, SchemeEntry, read_qsched, write_qsched
from qsched_export.quant import activation_ranges, get_scheme, observe_ranges, scheme_for
from runtimes.errors import UserError

log = logging.getLogger("calibration")

REPO = Path(__file__).resolve().parents[1]
SAMPLE_PROMPTS = REPO / "samples" / "prompts" / "calibration.txt"
SAMPLE_JUDGE = REPO / "samples" / "judges" / "shapes-clip-a"
# `--bits` for calibration means what it means for `build --target onnxruntime`.
BITS_TARGET = "onnxruntime"


def default_judge(sample: bool) -> str:
    """The embedded samples are judged by their own CLIP (trained on the same scenes); other models by ViT-L-14."""
    from calibration.judges import DEFAULT_CLIP

    return str(SAMPLE_JUDGE) if sample and SAMPLE_JUDGE.is_dir() else DEFAULT_CLIP


@dataclass(frozen=True)
class CalibrationConfig:
    """Everything one calibration run needs.

    Args:
        model: diffusers folder or hub id; None = the embedded sample. loras: LoRAs fused first.
        schemes: scheme names to calibrate (see qsched_export.quant.SCHEMES); `bits_to_schemes` maps --bits.
        steps: sampler steps. gamma: TCD's gamma (None = its default). prompts_file: one prompt a
            line (None = samples/prompts/calibration.txt).
        space: the grid. refine: refine the four ramp ends after the grid. k: JAQ's CLIP-IQA weight.
        judge: open_clip folder or NAME[@PRETRAINED] (None = the sample's judge for the samples, else ViT-L-14@openai).
        guidance: guidance scale (None = the backbone's default for the model, printed with its reason).
        seed: noise seed. percentile: activation range percentile (None = amax).
        out: qsched.json path (None = `out/<model>.qsched.json`). heatmap: PNG path (one per scheme:
            `<stem>-<scheme>.png` when several).
        nproc: processes to shard the grid over (torch.distributed). device: "cpu", "cuda" or None
            (CUDA when a GPU is visible). batch_size: images per denoiser call. progress: show progress bars.
    """

    model: str | None = None
    schemes: tuple[str, ...] = ("w8a8",)
    steps: int = 4
    gamma: float | None = None
    prompts_file: Path | None = None
    space: SearchSpace = field(default_factory=SearchSpace)
    refine: bool = True
    k: float = 2.0
    judge: str | None = None
    guidance: float | None = None
    seed: int = 0
    percentile: float | None = None
    out: Path | None = None
    heatmap: Path | None = None
    nproc: int = 1
    device: str | None = None
    batch_size: int = 64
    progress: bool = True
    loras: tuple[LoraSpec, ...] = ()

    @staticmethod
    def bits_to_schemes(bits: list[int]) -> tuple[str, ...]:
        bad = [b for b in bits if b not in (4, 8, 16)]
        if bad:
            hint = " (32 is full precision: there is nothing to calibrate)" if bad[0] == 32 else ""
            raise QSchedError(f"bits must be 4, 8 or 16, got {bad[0]}{hint}", "pass --bits 8 and/or --bits 4, or --scheme NAME")
        return tuple(scheme_for(BITS_TARGET, b).name for b in bits)

    @property
    def out_path(self) -> Path:
        from qsched_export.outputs import qsched_path

        return Path(self.out) if self.out is not None else qsched_path(self.model)

    @property
    def device_name(self) -> str:
        return self.device or ("cuda" if torch.cuda.is_available() else "cpu")

    def prompts_path(self) -> Path:
        return Path(self.prompts_file) if self.prompts_file is not None else SAMPLE_PROMPTS

    def read_prompts(self) -> list[str]:
        path = self.prompts_path()
        if path.is_dir() or not path.exists():
            raise QSchedError(f"prompt file {path} not found" if not path.exists() else f"prompt file {path} is a folder",
                              "pass --prompts FILE with one prompt a line")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise QSchedError(f"prompt file {path} is not UTF-8 text", "pass a text file with one prompt a line") from None
        if "\x00" in text:
            raise QSchedError(f"prompt file {path} is binary, not text", "pass a text file with one prompt a line")
        prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        if not prompts:
            raise QSchedError(f"prompt file {path} has no prompts", "write one prompt a line (the paper uses 5 to 25)")
        return prompts

    def validate(self) -> "CalibrationConfig":
        if not self.schemes:
            raise QSchedError("no scheme to calibrate", "pass --bits 8 and/or --bits 4, or --scheme NAME")
        for name in self.schemes:
            if get_scheme(name).name == "fp32":
                raise QSchedError("fp32 has nothing to calibrate", "pass --bits 8, 4 or 16")
        if self.guidance is not None and not (self.guidance >= 0 and math.isfinite(self.guidance)):
            raise QSchedError(f"guidance must be a finite number >= 0, got {self.guidance}", "pass e.g. --guidance 1.5, or leave it out for the model's default")
        if self.steps < 1:
            raise QSchedError(f"steps must be >= 1, got {self.steps}", "pass --steps 4")
        self.space.validate()
        if not (self.k >= 0 and math.isfinite(self.k)):
            raise QSchedError(f"k must be a finite number >= 0, got {self.k}", "pass --k 2 (the paper's value)")
        if self.seed < 0:
            raise QSchedError(f"seed must be >= 0, got {self.seed}", "pass --seed 0 or another non-negative integer")
        if self.nproc < 1:
            raise QSchedError(f"nproc must be >= 1, got {self.nproc}", "pass --nproc 1 or more")
        if self.batch_size < 1:
            raise QSchedError(f"batch size must be >= 1, got {self.batch_size}", "pass a positive batch size")
        if self.device not in (None, "cpu", "cuda"):
            raise QSchedError(f"device must be cpu or cuda, got {self.device!r}", "pass --device cpu or cuda")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise QSchedError("--device cuda but no CUDA device is visible", "run on a GPU machine or pass --device cpu")
        if self.device_name == "cuda" and self.nproc > torch.cuda.device_count():
            raise QSchedError(f"nproc {self.nproc} exceeds the {torch.cuda.device_count()} visible GPUs", f"pass --nproc {torch.cuda.device_count()}")
        from runtimes.files import check_output_file

        check_output_file(self.out_path)  # before the search: a result that cannot be written would be lost
        self.read_prompts()
        return self


def calibrate(config: CalibrationConfig, progress=None) -> QSchedFile:
    """Calibrate every scheme in `config`, write qsched.json (merged) and return it. `progress` is
    told the run's settings and estimate as they are known."""
    config.validate()
    import torch.distributed as dist

    if config.nproc > 1 and not (dist.is_available() and dist.is_initialized()):
        return _spawn(config)
    return _calibrate(config, progress or (lambda _msg: None))


def _device(config: CalibrationConfig) -> torch.device:
    import torch.distributed as dist

    if config.device_name == "cuda":
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        return torch.device("cuda", rank % torch.cuda.device_count())
    return torch.device("cpu")


@dataclass
class Session:
    """What every scheme of one run shares: the backbone, the encoded prompts, the fixed noise and
    the objective (built once)."""

    config: CalibrationConfig
    backbone: object
    plan: object
    prompts: list[str]
    cond: object
    latents: torch.Tensor
    noises: list
    objective: object
    device: torch.device

    def evaluator(self, model, batch_size: int | None = None) -> Evaluator:
        return Evaluator(self.backbone.denoiser(model).to(self.device), self.backbone.decode, self.plan, self.cond, self.latents, self.noises,
                         self.objective, self.prompts, batch_size or self.config.batch_size)

    @torch.no_grad()
    def fp32_trajectory(self, model) -> None:
        """Run `model` along the sampler with all coefficients 1 on the calibration prompts and noise
        (what range observers watch)."""
        from qsched_export.pipeline import denoise_fn
        from qsched_export.sampler import sample_loop

        sample_loop(denoise_fn(self.backbone.denoiser(model).to(self.device), self.cond), self.plan, self.latents, self.noises)

    def simulated_model(self, scheme_name: str, model=None):
        """The backbone model with `scheme_name`'s numerics, static ranges observed along the FP32
        sampler trajectory on the calibration prompts; returns (model, report). `model`: a float
        copy to convert in place (e.g. one SmoothQuant has smoothed), default a copy of the pipeline's."""
        scheme = get_scheme(scheme_name)
        model, report = self.backbone.scheme_model(scheme, model)
        if scheme.static_activations:
            with observe_ranges(model, self.config.percentile):
                self.fp32_trajectory(model)
        return model, report


def prepare(config: CalibrationConfig) -> Session:
    """Load the pipeline and judge, encode the prompts once and draw the noise once (seeded)."""
    from calibration.jaq import JAQ
    from calibration.judges import load_clip
    from qsched_export.pipeline import draw_noise, open_backbone

    prompts = config.read_prompts()
    device = _device(config)
    backbone = open_backbone(config.model, loras=config.loras, guidance=config.guidance)
    objective = JAQ.from_clip(load_clip(config.judge or default_judge(backbone.source.sample), device=device), config.k)
    plan = backbone.plan(config.steps, **({"gamma": config.gamma} if config.gamma is not None else {}))
    cond = backbone.encode(prompts, device)
    latents, noises = draw_noise(plan, backbone.latent_shape(len(prompts)), torch.Generator().manual_seed(config.seed))
    latents, noises = latents.to(device), [None if n is None else n.to(device) for n in noises]
    backbone.pipe.vae.to(device)
    backbone.model.to(device)
    return Session(config, backbone, plan, prompts, cond, latents, noises, objective, device)


def _calibrate(config: CalibrationConfig, progress) -> QSchedFile:
    import torch.distributed as dist

    from qsched_export.sampler import QSchedCoefficients

    sharded = dist.is_available() and dist.is_initialized()
    rank0, world = (dist.get_rank() == 0, dist.get_world_size()) if sharded else (True, 1)
    session = prepare(config)
    backbone = session.backbone
    progress(f"{backbone.describe()}; {session.plan.family} sampler, {config.steps} steps, on {session.device}")
    previous = _compatible_existing(config, session)  # fail before the long work, not after
    ones = QSchedCoefficients.ones(session.plan.num_steps)
    started = time.perf_counter()
    fp32 = {k: float(v[0]) for k, v in session.evaluator(backbone.model).evaluate([ones]).items()}
    if session.device.type == "cpu":
        progress(_estimate(config, session, time.perf_counter() - started))
    entries: dict[str, SchemeEntry] = {}
    for name in config.schemes:
        started = time.perf_counter()
        model, report = session.simulated_model(name)
        ev = session.evaluator(model)
        naive = {k: float(v[0]) for k, v in ev.evaluate([ones]).items()}
        result = grid_search(ev, config.space, refine=config.refine, progress=config.progress and rank0)
        seconds = time.perf_counter() - started
        if rank0:
            message = edge_message(result)
            if message:
                log.warning("%s: %s", name, message)
            if config.heatmap is not None:
                save_heatmap(result, _heatmap_path(config, name), f"{name}: JAQ over ramp starts ({backbone.source.id}, {config.steps} steps)")
        entries[name] = SchemeEntry(
            coefficients=coefficients(result.best, session.plan.num_steps),
            ramp={"latent_coeff": [result.best[0], result.best[1]], "output_coeff": [result.best[2], result.best[3]]},
            jaq={"fp32": fp32, "naive": naive, "qsched": result.best_terms, "objective": session.objective.name, "k": config.k},
            search={**result.to_dict(), "refine": config.refine, "prompts": session.prompts, "seed": config.seed, "percentile": config.percentile,
                    "denoiser_calls": ev.denoiser_calls, "seconds": round(seconds, 3), "processes": world, "device": str(session.device),
                    "quantization": {**report.to_dict(), "scheme": get_scheme(name).to_dict()}},
            activation_ranges=activation_ranges(model),
        )
    qfile = QSchedFile(backbone.source.id, session.plan.family, config.steps, backbone.guidance.scale, {**previous, **entries},
                       session.plan.to_dict(), tuple(x.to_dict() for x in backbone.source.loras))
    if rank0:
        write_qsched(config.out_path, qfile)
    return qfile


def _estimate(config: CalibrationConfig, session: Session, first_seconds: float) -> str:
    """A CPU run's expected length, from the FP32 reference run (one candidate: one denoiser call
    per step on the prompts, decode, judge) scaled to the grid and refinement of every scheme."""
    candidates = config.space.grid ** 2 + (4 * 8 if config.refine else 0) + 1  # grid, 4 refine rounds of 8 moves, the naive run
    minutes = first_seconds * candidates * len(config.schemes) / 60
    return (f"calibrating on the CPU: about {minutes:.0f} min ({len(config.schemes)} scheme(s) x {candidates} candidates at "
            f"~{first_seconds:.1f} s each); a GPU (--device cuda) is much faster")


def _compatible_existing(config: CalibrationConfig, session: Session) -> dict:
    """Schemes already in the output file (kept on merge); a file for another setting is an error."""
    out = config.out_path
    if not out.is_file():
        return {}
    prev = read_qsched(out)
    backbone = session.backbone
    mismatch = prev.mismatches(model=backbone.source.id, plan=session.plan.to_dict(), guidance_scale=backbone.guidance.scale,
                               loras=tuple(x.to_dict() for x in backbone.source.loras))
    if mismatch:
        raise QSchedError(f"{out} holds a calibration for another setting ({'; '.join(mismatch)})", "pass another --out, or delete the old file")
    return dict(prev.schemes)


def _heatmap_path(config: CalibrationConfig, scheme: str) -> Path:
    path = Path(config.heatmap)
    return path if len(config.schemes) == 1 else path.with_name(f"{path.stem}-{scheme}{path.suffix}")


def _worker(rank: int, config: CalibrationConfig, init_file: str, result_file: str) -> None:
    import torch.distributed as dist

    backend = "nccl" if config.device_name == "cuda" else "gloo"
    if config.device_name == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    else:
        # Share the cores: nproc processes each using every core thrash the CPU.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // config.nproc))
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=config.nproc)
    try:
        _calibrate(config, lambda _msg: None)
        if rank == 0:
            Path(result_file).write_text(json.dumps({"ok": True}))
        # Every rank done before any tears gloo down: a rank that destroyed its group while the
        # other still wrote qsched.json died with SIGABRT under load ("terminate called without
        # an active exception").
        dist.barrier()
    except UserError as exc:
        # The parent re-raises it as one line; a traceback's text is no interface.
        Path(f"{result_file}.{rank}").write_text(json.dumps({"problem": exc.problem, "fix": exc.fix}))
        raise
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
        except mp.ProcessRaisedException:
            errors = sorted(Path(tmp).glob("done.*"))
            if errors:
                data = json.loads(errors[0].read_text())
                raise QSchedError(f"a calibration process failed: {data['problem']}", data["fix"]) from None
            raise
        if not os.path.exists(result_file):
            raise QSchedError("the calibration processes ended without a result", "rerun with --nproc 1 to see the error")
    return read_qsched(config.out_path)
