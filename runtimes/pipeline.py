"""Text-to-image from an artifact folder without torch: tokenizer -> text encoder -> unrolled
denoise -> VAE decoder -> PNG, each graph on an explicit `Runner`.

Wiring (the exporter's contract): the text encoder takes `input_ids` `[2B|B, L]` (negative
prompt first with classifier-free guidance) and its first output is the `context` of
`denoise`, which also takes `latents` `[B,C,h,w]` and, for stochastic samplers, `noise`
`[K,B,C,h,w]`, and returns `final_latents` (and `first_latents`, the latent after the first
step, for the parity check); the VAE decoder maps them to `image` `[B,3,H,W]` in [0, 1]. A fused
artifact has one `pipeline` graph from `input_ids`, `latents` (and `noise`) to `image` (and
`first_latents`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtimes.files import atomic_file
from runtimes.manifest import ArtifactError, Manifest, load_manifest
from runtimes.runners import Runner, open_runner
from runtimes.tokenizer import PromptTokenizer

STAGES = ("text_encoder", "denoise", "vae_decoder")


@dataclass(frozen=True)
class PipelineOutput:
    final_latents: np.ndarray | None  # None for a fused graph that returns the image only
    image: np.ndarray  # [B, 3, H, W] float in [0, 1]
    first_latents: np.ndarray | None = None  # the latent after the first step


class Text2ImagePipeline:
    """Runs an artifact. `providers` are ONNX Runtime's, in order and explicit (`cpu`, `cuda`,
    `tensorrt` or full names); `.engine` graphs run on TensorRT whatever `providers` says."""

    def __init__(self, artifact_dir: str | Path, providers: list[str] | tuple[str, ...] = ("cpu",), *, verify: bool = True):
        self.root = Path(artifact_dir)
        self.manifest: Manifest = load_manifest(self.root, verify=verify)
        self.tokenizer = PromptTokenizer(self.root, self.manifest.tokenizer)
        trt_version = self.manifest.tools.get("tensorrt")
        self.runners: dict[str, Runner] = {role: open_runner(self.root / spec.file, providers, tensorrt_version=trt_version)
                                           for role, spec in self.manifest.graphs.items()}
        if not self.manifest.fused:
            missing = [s for s in STAGES if s not in self.runners]
            if missing:
                raise ArtifactError(f"the artifact lacks the {', '.join(missing)} graph(s)", "re-export the artifact")

    @property
    def description(self) -> str:
        return next(iter(self.runners.values())).description

    @property
    def batch(self) -> int:
        return self.manifest.image.batch

    def input_ids(self, prompts: list[str]) -> np.ndarray:
        """Token ids the text encoder takes: `[negative * B; prompts]` with guidance, else `prompts`."""
        if len(prompts) != self.batch:
            raise ArtifactError(f"the artifact was exported for batch {self.batch}, got {len(prompts)} prompt(s)", f"pass {self.batch} prompt(s) or re-export with --batch {len(prompts)}")
        texts = [self.manifest.negative_prompt] * len(prompts) + list(prompts) if self.manifest.do_cfg else list(prompts)
        return self.tokenizer.ids(texts)

    def draw_noise(self, seed: int) -> dict[str, np.ndarray]:
        """The initial latent then each step's noise, from `numpy.random.default_rng(seed)`."""
        rng = np.random.default_rng(seed)
        graph = self.manifest.graph("pipeline" if self.manifest.fused else "denoise")
        return {name: rng.standard_normal(graph.inputs[name].shape, dtype=np.float32)
                for name in ("latents", "noise") if name in graph.inputs}

    def run(self, input_ids: np.ndarray, latents: np.ndarray, noise: np.ndarray | None = None) -> PipelineOutput:
        draws = {"latents": latents} | ({"noise": noise} if noise is not None else {})
        if self.manifest.fused:
            runner = self.runners["pipeline"]
            out = runner.run(_pick(runner, {"input_ids": input_ids, **draws}))
            return PipelineOutput(out.get("final_latents"), out["image"], out.get("first_latents"))
        text = self.runners["text_encoder"]
        context = text.run({text.input_names[0]: input_ids})[text.output_names[0]]
        denoise = self.runners["denoise"]
        out = denoise.run(_pick(denoise, {"context": context, **draws}))
        final = out["final_latents"]
        vae = self.runners["vae_decoder"]
        return PipelineOutput(final, vae.run({vae.input_names[0]: final})[vae.output_names[0]], out.get("first_latents"))

    def __call__(self, prompts: list[str], seed: int = 0) -> PipelineOutput:
        return self.run(self.input_ids(prompts), **self.draw_noise(seed))


def _pick(runner: Runner, available: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    missing = [n for n in runner.input_names if n not in available]
    if missing:
        raise ArtifactError(f"{runner.description}: graph input(s) {', '.join(missing)} are not part of the runtime contract "
                            f"(it feeds {', '.join(available)})", "re-export the artifact with this qsched-export version")
    return {n: available[n] for n in runner.input_names}


def to_uint8(images: np.ndarray) -> np.ndarray:
    """`[B, 3, H, W]` in [0, 1] -> `[B, H, W, 3]` uint8, rounded as the PyTorch side does."""
    return (np.clip(images, 0.0, 1.0).transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write one `[3, H, W]` image in [0, 1] as PNG, atomically (temp file, then rename)."""
    from PIL import Image

    path = Path(path)
    with atomic_file(path, "wb") as f:
        Image.fromarray(to_uint8(image[None])[0]).save(f, format="PNG")
    return path
