"""Evaluate the shipped sample on CPU: pick the few-step scheduler, score, time, draw a grid.

    python -m samples.train.evaluate --prompts 48 --results samples/train/results.json

Writes the chosen scheduler into samples/shapes-sd/scheduler, measured numbers into
results.json and docs/sample_grid.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from samples.train import scenes
from samples.train.degrade import DEGRADATIONS, degrade

PIPELINE = Path("samples/shapes-sd")
JUDGES = {"a": Path("samples/judges/shapes-clip-a"), "b": Path("samples/judges/shapes-clip-b")}
GUIDANCE = 3.0


def candidate_schedulers(config: dict) -> dict:
    from diffusers import EulerAncestralDiscreteScheduler, LCMScheduler, TCDScheduler

    common = dict(timestep_spacing="trailing", prediction_type="v_prediction")
    return {
        "TCD gamma=0": (TCDScheduler.from_config(config, **common), dict(eta=0.0)),
        "TCD gamma=0.3": (TCDScheduler.from_config(config, **common), dict(eta=0.3)),
        "LCM": (LCMScheduler.from_config(config, **common), {}),
        "EulerAncestral": (EulerAncestralDiscreteScheduler.from_config(config, **common), {}),
    }


def save_scheduler(scheduler, pipeline_dir: Path) -> None:
    """Ship ``scheduler`` with the pipeline: its config, and its class in model_index.json."""
    scheduler.save_pretrained(pipeline_dir / "scheduler")
    index_path = pipeline_dir / "model_index.json"
    index = json.loads(index_path.read_text())
    index["scheduler"] = ["diffusers", type(scheduler).__name__]
    index_path.write_text(json.dumps(index, indent=2) + "\n")


def generate(pipe, prompts: list[str], steps: int, extra: dict, seed: int = 0) -> torch.Tensor:
    return pipe(prompts, num_inference_steps=steps, guidance_scale=GUIDANCE, output_type="pt",
                generator=torch.Generator().manual_seed(seed), **extra).images


class Judge:
    """CLIPScore (100 * max(cos, 0)) and CLIP-IQA ("Good photo." vs "Bad photo.", scale 100)."""

    def __init__(self, folder: Path):
        import open_clip

        self.model, _, self.preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        # Same normalisation as the preprocess transform, applied to tensors already at 64x64.
        return F.normalize(self.model.encode_image((images - 0.5) / 0.5), dim=-1)

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        return F.normalize(self.model.encode_text(self.tokenizer(texts)), dim=-1)

    def clip_score(self, images: torch.Tensor, prompts: list[str]) -> float:
        cos = (self.image_features(images) * self.text_features(prompts)).sum(-1)
        return float((100 * cos.clamp(min=0)).mean())

    def iqa(self, images: torch.Tensor) -> float:
        logits = 100 * self.image_features(images) @ self.text_features(["Good photo.", "Bad photo."]).T
        return float(logits.softmax(-1)[:, 0].mean())

    def retrieval(self, images: torch.Tensor, prompts: list[str]) -> float:
        sim = self.image_features(images) @ self.text_features(prompts).T
        return float((sim.argmax(1) == torch.arange(len(prompts))).float().mean())


def judge_metrics(judge: Judge, n: int) -> dict:
    specs = scenes.heldout_specs(n, seed=99)
    prompts = [scenes.caption(s) for s in specs]
    images = scenes.render_tensors(scenes.specs_to_tensors(specs))
    strength = torch.full((n,), 0.5)
    return {
        "heldout_retrieval_top1": judge.retrieval(images, prompts),
        "clipscore_matched": judge.clip_score(images, prompts),
        "clipscore_shuffled": judge.clip_score(images, prompts[1:] + prompts[:1]),
        "iqa_clean": judge.iqa(images),
        "iqa_degraded": {d: judge.iqa(degrade(images, k, strength)) for k, d in enumerate(DEGRADATIONS)},
    }


def save_grid(images: dict[int, torch.Tensor], prompts: list[str], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted(images)
    fig, axes = plt.subplots(len(steps), len(prompts), figsize=(2.2 * len(prompts), 2.5 * len(steps)))
    for r, s in enumerate(steps):
        for c, prompt in enumerate(prompts):
            ax = axes[r, c]
            ax.imshow(images[s][c].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                words = prompt.split()
                ax.set_title("\n".join(" ".join(words[i:i + 4]) for i in range(0, len(words), 4)), fontsize=7)
            if c == 0:
                ax.set_ylabel(f"{s} steps", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main() -> None:
    from diffusers import StableDiffusionPipeline

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=48, help="held-out prompts per measurement")
    p.add_argument("--results", type=Path, default=Path("samples/train/results.json"))
    p.add_argument("--grid", type=Path, default=Path("docs/sample_grid.png"))
    args = p.parse_args()
    torch.set_num_threads(2)

    pipe = StableDiffusionPipeline.from_pretrained(PIPELINE, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    specs = scenes.heldout_specs(args.prompts)
    prompts = [scenes.caption(s) for s in specs]
    results: dict = {"guidance_scale": GUIDANCE, "prompts": args.prompts, "schedulers_at_4_steps": {}}

    candidates = candidate_schedulers(pipe.scheduler.config)
    for name, (scheduler, extra) in candidates.items():
        pipe.scheduler = scheduler
        results["schedulers_at_4_steps"][name] = scenes.analyse(generate(pipe, prompts, 4, extra), specs)
        print(name, results["schedulers_at_4_steps"][name], flush=True)
    best = max(results["schedulers_at_4_steps"], key=lambda k: results["schedulers_at_4_steps"][k]["all"])
    scheduler, extra = candidates[best]
    pipe.scheduler = scheduler
    save_scheduler(scheduler, PIPELINE)
    results["chosen_scheduler"] = {"name": best, "call_kwargs": extra, "config": dict(scheduler.config)}

    judges = {k: Judge(v) for k, v in JUDGES.items()}
    results["judges"] = {k: judge_metrics(j, 256) for k, j in judges.items()}
    results["per_steps"] = {}
    grid_images = {}
    for steps in (2, 4, 8):
        images = generate(pipe, prompts, steps, extra)
        grid_images[steps] = images[:8]
        results["per_steps"][steps] = {
            "analyser": scenes.analyse(images, specs),
            **{f"clipscore_{k}": j.clip_score(images, prompts) for k, j in judges.items()},
            **{f"iqa_{k}": j.iqa(images) for k, j in judges.items()},
        }
        # One prompt at a time, as a user would run it; the first call also warms up.
        generate(pipe, prompts[:1], steps, extra)
        start = time.perf_counter()
        for prompt in prompts[:3]:
            generate(pipe, [prompt], steps, extra)
        results["per_steps"][steps]["cpu_seconds_per_image"] = (time.perf_counter() - start) / 3
        print(steps, results["per_steps"][steps], flush=True)
    results["cpu"] = f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    save_grid(grid_images, prompts[:8], args.grid)
    args.results.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
