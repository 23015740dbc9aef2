"""Judges score generated images; the search maximises their combination (JAQ, see jaq.py).

A judge is anything with `name` and `score(images, prompts) -> (B,) tensor` (images `(B, 3, H, W)`
in [0, 1]). Register new ones (HPSv2, ImageReward, ...) with `register_judge(name)(factory)`;
`make_judge(name, **kwargs)` builds one, so the search never changes when a judge is added.

Built in:
- `ClipModel`: an open_clip model loaded from a local folder (`open_clip_config.json` + weights,
  open_clip's `local-dir:` layout), or `NAME` / `NAME@PRETRAINED` (a tag such as `openai`, which
  needs the hub or open_clip's cache, or a checkpoint file path).
- `clipscore`: cosine of image and prompt embeddings (CLIPScore's w * max(cos, 0) is applied in jaq.py).
- `clipiqa`: pyiqa's "clipiqa" when pyiqa is installed and its weights load; else CLIP-IQA's
  antonym method with the same open_clip model: softmax(100 * cos(image, ["Good photo.", "Bad photo."]))[0].
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from qsched_export.errors import QSchedError

log = logging.getLogger(__name__)

DEFAULT_CLIP = "ViT-L-14@openai"
ANTONYMS = ("Good photo.", "Bad photo.")
_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin", "model.safetensors")


@runtime_checkable
class Judge(Protocol):
    name: str

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Per-image scores `(B,)` for images `(B, 3, H, W)` in [0, 1] and their prompts."""


JUDGES: dict[str, Callable[..., Judge]] = {}


def register_judge(name: str):
    def add(factory: Callable[..., Judge]) -> Callable[..., Judge]:
        JUDGES[name] = factory
        return factory
    return add


def make_judge(name: str, **kwargs) -> Judge:
    if name not in JUDGES:
        raise QSchedError(f"unknown judge {name!r}", f"use one of {', '.join(sorted(JUDGES))} or register_judge() your own")
    return JUDGES[name](**kwargs)


class ClipModel:
    """An open_clip model with its tokenizer and tensor preprocessing, text embeddings cached."""

    def __init__(self, model, tokenizer, name: str, device: str | torch.device = "cpu"):
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.name = name
        self.device = torch.device(device)
        cfg = getattr(model.visual, "preprocess_cfg", {})
        size = cfg.get("size", model.visual.image_size)
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        self.mean = torch.tensor(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)), device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", (0.26862954, 0.26130258, 0.27577711)), device=self.device).view(1, 3, 1, 1)
        self._text_cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        # open_clip's transform on tensors: resize (bicubic, antialiased) then normalise. Our
        # images are square, so its resize + center crop is a plain resize here.
        x = images.to(self.device, torch.float32)
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        return F.normalize(self.model.encode_image((x - self.mean) / self.std).float(), dim=-1)

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            feats = F.normalize(self.model.encode_text(self.tokenizer(missing).to(self.device)).float(), dim=-1)
            self._text_cache.update(zip(missing, feats))
        return torch.stack([self._text_cache[t] for t in texts])


def load_clip(spec: str = DEFAULT_CLIP, device: str | torch.device = "cpu") -> ClipModel:
    """Load an open_clip model: a local folder (open_clip_config.json + weights) or NAME[@PRETRAINED]."""
    import open_clip

    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "open_clip_config.json").is_file():
            raise QSchedError(f"judge folder {path} has no open_clip_config.json", "pass a folder with open_clip_config.json and open_clip_model.safetensors")
        # open_clip only warns (and keeps random weights) when the folder has no checkpoint.
        if not any((path / f).is_file() for f in _WEIGHT_FILES):
            raise QSchedError(f"judge folder {path} has no weights ({' or '.join(_WEIGHT_FILES[:2])})", "add the open_clip weights to the folder")
        name = f"local-dir:{path.resolve()}"
        try:
            model = open_clip.create_model(name, device=device)
            tokenizer = open_clip.get_tokenizer(name)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise QSchedError(f"could not load the judge from {path}: {str(exc).splitlines()[0]}", "check open_clip_config.json and the weights") from exc
        # Named by folder and weights hash, not by path: qsched.json records it, and a path would
        # name the calibrating machine's disk.
        return ClipModel(model, tokenizer, f"{path.resolve().name}@sha256:{_weights_digest(path)[:16]}", device)
    model_name, _, pretrained = spec.partition("@")
    if model_name not in open_clip.list_models():
        raise QSchedError(f"judge {spec!r} is neither a folder nor an open_clip model name", "pass a local open_clip folder or e.g. ViT-L-14@openai")
    try:
        model = open_clip.create_model(model_name, pretrained=pretrained or None, device=device)
    except Exception as exc:  # open_clip raises RuntimeError/OSError/HF errors for a missing download
        raise QSchedError(
            f"could not load judge weights {model_name} pretrained={pretrained or 'none'!r} (not cached, and the hub is unreachable?)",
            "pass a local open_clip folder (open_clip_config.json + open_clip_model.safetensors) or NAME@/path/to/checkpoint with --judge",
        ) from exc
    return ClipModel(model, open_clip.get_tokenizer(model_name), spec, device)


def _weights_digest(folder: Path) -> str:
    weights = next(folder / f for f in _WEIGHT_FILES if (folder / f).is_file())
    digest = hashlib.sha256()
    with open(weights, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@register_judge("clipscore")
class ClipScoreJudge:
    """Cosine similarity of the image and its prompt in the CLIP embedding space."""

    def __init__(self, clip: ClipModel):
        self.clip = clip
        self.name = f"clipscore:{clip.name}"

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return (self.clip.image_features(images) * self.clip.text_features(prompts)).sum(-1).cpu()


@register_judge("clipiqa-antonym")
class AntonymIQAJudge:
    """CLIP-IQA's antonym method: P("Good photo.") against "Bad photo." with logit scale 100."""

    def __init__(self, clip: ClipModel):
        self.clip = clip
        self.name = f"clipiqa-antonym:{clip.name}"

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        logits = 100 * self.clip.image_features(images) @ self.clip.text_features(list(ANTONYMS)).T
        return logits.softmax(dim=-1)[:, 0].cpu()


class PyiqaJudge:
    """pyiqa's CLIP-IQA metric (its own CLIP and learned prompts)."""

    def __init__(self, metric):
        self.metric = metric
        self.name = "pyiqa:clipiqa"

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.metric(images.float()).reshape(-1).cpu()


@register_judge("clipiqa")
def clip_iqa(clip: ClipModel) -> Judge:
    """pyiqa's clipiqa when installed and loadable, else the antonym method on `clip`; the
    judge's `name` says which one ran, and calibration records it."""
    try:
        import pyiqa
    except ImportError:
        return AntonymIQAJudge(clip)
    try:
        return PyiqaJudge(pyiqa.create_metric("clipiqa", device=clip.device, as_loss=False))
    except Exception as exc:  # pyiqa downloads its weights; without the hub it fails in many ways
        log.warning("pyiqa clipiqa could not load (%s); using the CLIP-IQA antonym method with %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__, clip.name)
        return AntonymIQAJudge(clip)
