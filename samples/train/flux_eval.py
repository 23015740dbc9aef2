"""Evaluate samples/shapes-flux: draw held-out prompts under several sampler settings, then score
them with the scene analyser (scenes.analyse) and pick the shipped scheduler shift.

Two steps, because the analyser needs scipy, which the GPU machine lacks:

    # on the device, right after training (fast; uint8 images, one .npz per setting)
    python -m samples.train.flux_eval generate --pipeline out/shapes-flux --fp32 out/shapes-flux-fp32 \
        --out out/eval --prompts 256 --seconds 45
    # settings the deadline or size budget left out: the same command, anywhere, with --skip-existing
    # then, anywhere with scipy (CPU, ~30 s); writes the chosen shift into the pipeline's scheduler
    python -m samples.train.flux_eval analyse --images out/eval --results samples/train/flux_results.json \
        --pipeline samples/shapes-flux --write-scheduler --grid docs/flux_sample_grid.png

``generate`` also analyses on the spot when scipy is importable. Both steps decode the same
uint8 images, so their numbers agree.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from samples.train import scenes
from samples.train.flux_models import T5_MAX_TOKENS

EVAL_SEED = 4321      # held-out prompts for choosing the shift; the benchmark's default seed is 1234
SHIFTS = (1.0, 1.5, 2.0, 3.0)
CHUNK = 256           # prompts per pipeline call


@dataclass(frozen=True)
class Setting:
    steps: int
    shift: float
    stochastic: bool = False
    true_cfg: float = 1.0   # >1: FluxPipeline's true CFG against the empty prompt
    weights: str = "fp16"   # "fp32": the unshipped fp32 twin, for the fp16 check

    @property
    def name(self) -> str:
        extra = (f"_cfg{self.true_cfg:g}" if self.true_cfg > 1 else "") + ("_fp32" if self.weights == "fp32" else "")
        return f"s{self.shift:g}_{'sto' if self.stochastic else 'det'}_{self.steps}{extra}"


def settings(default_shift: float, with_fp32: bool) -> list[Setting]:
    """In priority order: a deadline cuts from the end."""
    out = [Setting(4, default_shift)]
    if with_fp32:
        out.append(Setting(4, default_shift, weights="fp32"))
    out += [Setting(4, s) for s in SHIFTS if s != default_shift]
    out += [Setting(4, s, stochastic=True) for s in SHIFTS]
    out += [Setting(n, s) for s in SHIFTS for n in (2, 8)]
    out.append(Setting(4, default_shift, true_cfg=2.0))
    return out


def to_uint8(images: torch.Tensor) -> np.ndarray:
    return (images.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def from_uint8(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr).float() / 255


@torch.no_grad()
def draw(pipe, prompts: list[str], setting: Setting, seed: int = 0) -> torch.Tensor:
    """Images [N, 3, 64, 64] in [0, 1]; initial noise from a CPU generator, so any device draws
    the same starting latents."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(
        pipe.scheduler.config, shift=setting.shift, stochastic_sampling=setting.stochastic)
    torch.manual_seed(seed)  # the stochastic sampler's fresh noise comes from the global generator
    extra = dict(negative_prompt=[""] * CHUNK, true_cfg_scale=setting.true_cfg) if setting.true_cfg > 1 else {}
    out = []
    for i in range(0, len(prompts), CHUNK):
        chunk = prompts[i:i + CHUNK]
        if extra:
            extra["negative_prompt"] = [""] * len(chunk)
        out.append(pipe(chunk, num_inference_steps=setting.steps, guidance_scale=0.0, height=64, width=64,
                        max_sequence_length=T5_MAX_TOKENS, generator=torch.Generator().manual_seed(seed + i),
                        output_type="pt", **extra).images.float().cpu())
    return torch.cat(out)


@torch.no_grad()
def vae_roundtrip(vae, specs, device: str) -> torch.Tensor:
    """Real renders through the VAE (posterior mean): the ceiling the generator can reach."""
    images = scenes.render_tensors(scenes.specs_to_tensors(specs, device))
    z = vae.encode(images * 2 - 1).latent_dist.mode()
    return ((vae.decode(z).sample + 1) / 2).clamp(0, 1).cpu()


def have_scipy() -> bool:
    import importlib.util

    return importlib.util.find_spec("scipy") is not None


def generate(args) -> None:
    from diffusers import FluxPipeline

    start = time.time()
    deadline = start + args.seconds
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":  # exact fp32, as on a CPU
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    args.out.mkdir(parents=True, exist_ok=True)
    specs = scenes.heldout_specs(args.prompts, seed=EVAL_SEED)
    prompts = [scenes.caption(s) for s in specs]
    pipe = FluxPipeline.from_pretrained(args.pipeline, torch_dtype=torch.float32).to(device)
    pipe.set_progress_bar_config(disable=True)
    default_shift = float(pipe.scheduler.config.shift)
    twin = None
    if args.fp32 is not None and args.fp32.exists():
        twin = FluxPipeline.from_pretrained(args.fp32, torch_dtype=torch.float32).to(device)
        twin.set_progress_bar_config(disable=True)
    meta: dict = dict(prompts=args.prompts, seed=EVAL_SEED, device=torch.cuda.get_device_name() if device == "cuda"
                      else "cpu", default_shift=default_shift, max_sequence_length=T5_MAX_TOKENS, settings={})
    meta_path = args.out / "eval_meta.json"
    if args.skip_existing and meta_path.exists():  # e.g. finish on a CPU what the device run left out
        meta = json.loads(meta_path.read_text())
        if (meta["prompts"], meta["seed"]) != (args.prompts, EVAL_SEED):
            raise SystemExit(f"{meta_path} holds {meta['prompts']} prompts (seed {meta['seed']}); pass --prompts "
                             f"{meta['prompts']} or a new --out")

    def record(name: str, images: torch.Tensor, seconds: float, **extra) -> None:
        np.savez_compressed(args.out / f"{name}.npz", images=to_uint8(images))
        meta["settings"][name] = dict(seconds=round(seconds, 2), **extra)
        meta_path.write_text(json.dumps(meta, indent=2))

    def megabytes() -> float:
        return sum(f.stat().st_size for f in args.out.glob("*.npz")) / 2 ** 20

    t = time.time()
    if "vae_roundtrip" not in meta["settings"]:
        record("vae_roundtrip", vae_roundtrip(pipe.vae, specs, device), time.time() - t)
    fp16_default = None
    for setting in settings(default_shift, twin is not None):
        if setting.name in meta["settings"]:
            continue
        if time.time() > deadline or megabytes() > args.max_mb:
            print(f"{'deadline' if time.time() > deadline else 'size budget'}: skipped {setting.name} and later "
                  "settings (generate them anywhere with the same command)", flush=True)
            break
        t = time.time()
        images = draw(twin if setting.weights == "fp32" else pipe, prompts, setting)
        extra = asdict(setting)
        if setting == Setting(4, default_shift):
            fp16_default = images
        if setting.weights == "fp32" and fp16_default is not None:
            diff = (images - fp16_default).abs()
            extra["fp16_vs_fp32"] = dict(mean_abs=float(diff.mean()), max_abs=float(diff.max()),
                                         pixels_off_by_over_2_levels=float((diff > 2 / 255).float().mean()))
        record(setting.name, images, time.time() - t, **extra)
        print(f"{setting.name}: {time.time() - t:.1f}s", flush=True)
    if have_scipy():  # otherwise `analyse` runs later, where scipy is
        analyse_folder(args.out, deadline=deadline)
    else:
        print("scipy missing: run `python -m samples.train.flux_eval analyse` where it is installed", flush=True)
    print(f"generate done in {time.time() - start:.0f}s", flush=True)


def analyse_folder(folder: Path, deadline: float = float("inf")) -> dict:
    """Analyser scores of every saved setting (plus real renders), written into eval_meta.json."""
    meta = json.loads((folder / "eval_meta.json").read_text())
    specs = scenes.heldout_specs(meta["prompts"], seed=meta["seed"])
    scores = {"ground_truth": scenes.analyse(scenes.render_tensors(scenes.specs_to_tensors(specs)), specs)}
    for name in meta["settings"]:
        if time.time() > deadline:
            break
        scores[name] = scenes.analyse(from_uint8(np.load(folder / f"{name}.npz")["images"]), specs)
        print(name, {k: round(v, 3) for k, v in scores[name].items()}, flush=True)
    meta["analyser"] = scores
    (folder / "eval_meta.json").write_text(json.dumps(meta, indent=2))
    return meta


def choose(meta: dict, allow_stochastic: bool) -> str:
    """Best 4-step setting by the analyser's all-correct rate; deterministic Euler (schnell's
    sampler) unless ``allow_stochastic``; ties go to the trained-for default shift."""
    candidates = [n for n, s in meta["settings"].items() if n in meta["analyser"] and s.get("steps") == 4
                  and s.get("weights") == "fp16" and s.get("true_cfg") == 1.0
                  and (allow_stochastic or not s.get("stochastic"))]
    return max(candidates, key=lambda n: (round(meta["analyser"][n]["all"], 4),
                                          meta["settings"][n]["shift"] == meta["default_shift"]))


def analyse(args) -> None:
    meta = analyse_folder(args.images)
    best = choose(meta, args.allow_stochastic)
    chosen = meta["settings"][best]
    results = dict(meta, chosen=dict(name=best, shift=chosen["shift"], stochastic=chosen["stochastic"]))
    results["by_steps"] = {n: meta["analyser"].get(Setting(n, chosen["shift"], chosen["stochastic"]).name)
                           for n in (2, 4, 8)}
    print(f"chosen: {best} {meta['analyser'][best]}", flush=True)
    if args.results:
        args.results.write_text(json.dumps(results, indent=2) + "\n")
    if args.write_scheduler:
        from diffusers import FlowMatchEulerDiscreteScheduler

        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(args.pipeline / "scheduler")
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config, shift=chosen["shift"],
                                                                stochastic_sampling=chosen["stochastic"])
        scheduler.save_pretrained(args.pipeline / "scheduler")
        print(f"wrote shift {chosen['shift']} (stochastic {chosen['stochastic']}) to {args.pipeline / 'scheduler'}")
    if args.grid:
        from samples.train.evaluate import save_grid

        specs = scenes.heldout_specs(meta["prompts"], seed=meta["seed"])
        rows = {}
        for n in (2, 4, 8):
            path = args.images / f"{Setting(n, chosen['shift'], chosen['stochastic']).name}.npz"
            if path.exists():
                rows[n] = from_uint8(np.load(path)["images"][:8])
        save_grid(rows, [scenes.caption(s) for s in specs[:8]], args.grid)
        print(f"grid: {args.grid}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="draw every setting's images (GPU if present)")
    g.add_argument("--pipeline", type=Path, required=True)
    g.add_argument("--fp32", type=Path, help="the fp32 twin of --pipeline, for the fp16 check")
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--prompts", type=int, default=256)
    g.add_argument("--seconds", type=float, default=45.0, help="stop starting new settings after this")
    g.add_argument("--skip-existing", action="store_true", help="keep settings already in --out")
    g.add_argument("--max-mb", type=float, default=13.0,
                   help="stop starting new settings once the saved images reach this size (the device "
                        "returns files of at most 16 MiB)")
    a = sub.add_parser("analyse", help="score saved images with the analyser (needs scipy)")
    a.add_argument("--images", type=Path, required=True, help="folder written by generate")
    a.add_argument("--results", type=Path, help="write the results JSON here")
    a.add_argument("--pipeline", type=Path, help="pipeline folder whose scheduler --write-scheduler updates")
    a.add_argument("--write-scheduler", action="store_true", help="ship the chosen shift in --pipeline")
    a.add_argument("--allow-stochastic", action="store_true", help="let the stochastic sampler be chosen")
    a.add_argument("--grid", type=Path, help="PNG of 8 prompts at 2/4/8 steps with the chosen setting")
    args = p.parse_args()
    if args.command == "analyse" and args.write_scheduler and args.pipeline is None:
        p.error("--write-scheduler needs --pipeline")
    torch.set_num_threads(4)
    generate(args) if args.command == "generate" else analyse(args)


if __name__ == "__main__":
    main()
