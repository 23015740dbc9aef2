"""Text-to-image from an artifact folder without torch: tokenizers -> graphs -> PNG.

Wiring comes from the manifest, not from a stage list: the graphs run in manifest order, each fed
by name from one pool of tensors that starts with the tokenizers' ids (by each tokenizer's
`input`) and the drawn `latents`/`noise`, and grows with every graph's outputs. The exporter
names the tensors so they meet (graphs.py in qsched_export.export): the text graph turns ids into
the backbone's conditioning, the denoise graph turns conditioning and noise into `final_latents`
and `first_latents` (the latent after the first step, for the parity check), and the decoder turns
`final_latents` into `image` `[B,3,H,W]` in [0, 1]. A new backbone needs no runtime code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtimes.files import atomic_file
from runtimes.manifest import ArtifactError, Manifest, load_manifest
from runtimes.runners import Runner, open_runner
from runtimes.tokenizer import PromptTokenizer

# What the drawn noise feeds, and the outputs a run returns.
DRAWS = ("latents", "noise")
RESULTS = ("final_latents", "first_latents", "image")


@dataclass(frozen=True)
class PipelineOutput:
    image: np.ndarray  # [B, 3, H, W] float in [0, 1]
    final_latents: np.ndarray | None = None  # None for a fused graph, which returns the image only
    first_latents: np.ndarray | None = None  # the latent after the first step


class Text2ImagePipeline:
    """Runs an artifact. `providers` are ONNX Runtime's, in order and explicit (`cpu`, `cuda`,
    `tensorrt` or full names); `.engine` graphs run on TensorRT whatever `providers` says."""

    def __init__(self, artifact_dir: str | Path, providers: list[str] | tuple[str, ...] = ("cpu",), *, verify: bool = True):
        self.root = Path(artifact_dir)
        self.manifest: Manifest = load_manifest(self.root, verify=verify)
        self.tokenizers = [PromptTokenizer(self.root, spec) for spec in self.manifest.tokenizers]
        trt_version = self.manifest.tools.get("tensorrt")
        self.runners: dict[str, Runner] = {role: open_runner(self.root / spec.file, providers, tensorrt_version=trt_version)
                                           for role, spec in self.manifest.graphs.items()}
        self._check_wiring()

    def _check_wiring(self) -> None:
        """Every graph input must be fed by a tokenizer, a draw or an earlier graph, and the graphs
        must produce an image: say so now, not after the text encoder ran."""
        available = {t.input for t in self.manifest.tokenizers} | set(DRAWS)
        for role, runner in self.runners.items():
            missing = [n for n in runner.input_names if n not in available]
            if missing:
                raise ArtifactError(f"graph {role} takes {', '.join(missing)}, which nothing before it produces "
                                    f"(available: {', '.join(sorted(available))})", "re-export the artifact with this qsched-export version")
            available |= set(runner.output_names)
        if "image" not in available:
            raise ArtifactError("no graph of the artifact produces an image", "re-export the artifact")

    @property
    def description(self) -> str:
        return next(iter(self.runners.values())).description

    @property
    def batch(self) -> int:
        return self.manifest.image.batch

    @property
    def input_names(self) -> tuple[str, ...]:
        """What `run` takes: each tokenizer's ids and the draws the graphs consume."""
        consumed = {n for r in self.runners.values() for n in r.input_names}
        return tuple(t.input for t in self.manifest.tokenizers) + tuple(d for d in DRAWS if d in consumed)

    def input_ids(self, prompts: list[str]) -> dict[str, np.ndarray]:
        """Each tokenizer's ids for `prompts` (the positive prompts: the negative one is baked in)."""
        if len(prompts) != self.batch:
            raise ArtifactError(f"the artifact was exported for batch {self.batch}, got {len(prompts)} prompt(s)",
                                f"pass {self.batch} prompt(s) or re-export with --batch {len(prompts)}")
        return {t.spec.input: t.ids(prompts) for t in self.tokenizers}

    def dropped_tokens(self, prompts: list[str]) -> int:
        """The most tokens any tokenizer cuts from any prompt (0 when every prompt fits)."""
        return max((n for t in self.tokenizers for n in t.dropped(prompts)), default=0)

    def draw_noise(self, seed: int) -> dict[str, np.ndarray]:
        """The initial latent then each step's noise, from `numpy.random.default_rng(seed)`."""
        rng = np.random.default_rng(seed)
        shapes = {n: spec.shape for g in self.manifest.graphs.values() for n, spec in g.inputs.items() if n in DRAWS}
        return {name: rng.standard_normal(shapes[name], dtype=np.float32) for name in DRAWS if name in shapes}

    def run(self, feeds: dict[str, np.ndarray]) -> PipelineOutput:
        """Run every graph in manifest order on `feeds` (`input_names`: ids and draws by name)."""
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ArtifactError(f"the run lacks input(s) {', '.join(missing)}", f"feed {', '.join(self.input_names)}")
        pool = dict(feeds)
        for runner in self.runners.values():
            pool.update(runner.run({n: pool[n] for n in runner.input_names}))
        return PipelineOutput(pool["image"], pool.get("final_latents"), pool.get("first_latents"))

    def __call__(self, prompts: list[str], seed: int = 0) -> PipelineOutput:
        return self.run({**self.input_ids(prompts), **self.draw_noise(seed)})


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
