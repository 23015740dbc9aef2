"""LoRA-distilled checkpoints (LCM-LoRA, TCD, PCM, Hyper-SD): `--lora PATH_OR_HUB_ID[:SCALE]`.

Each LoRA is loaded with diffusers' `load_lora_weights` and fused into the weights
(`set_adapters` with the scales, `fuse_lora`, `unload_lora_weights`) before anything is quantized,
so calibration, fake-quant and export all see one plain set of fused weights. What was fused (id,
scale, sha256 of the weights file) goes into qsched.json and the manifest: Q-Sched coefficients are
calibrated for the fused weights, and exporting with coefficients calibrated for another LoRA or
scale is refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

from qsched_export.errors import QSchedError

WEIGHTS_SUFFIX = ".safetensors"


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA: `id` as given (a local file or folder, or a hub id), `scale`, and the sha256 of the
    weights file it resolved to (filled in by `fuse_loras`)."""

    id: str
    scale: float = 1.0
    sha256: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LoraSpec":
        return cls(str(data["id"]), float(data["scale"]), str(data.get("sha256", "")))

    @property
    def label(self) -> str:
        return f"{self.id}:{self.scale:g}"


def parse_lora(text: str) -> LoraSpec:
    """`PATH_OR_HUB_ID[:SCALE]`; a trailing `:number` is the scale (default 1)."""
    head, sep, tail = text.rpartition(":")
    source, scale = (head, tail) if sep and _is_number(tail) else (text, "1")
    if not source.strip():
        raise QSchedError(f"--lora {text!r} names no LoRA", "pass --lora PATH_OR_HUB_ID[:SCALE], e.g. --lora lcm-lora.safetensors:1.0")
    value = float(scale)
    if not (0 < value < float("inf")):
        raise QSchedError(f"LoRA scale must be a positive finite number, got {scale} in --lora {text}", "pass e.g. --lora PATH:1.0")
    return LoraSpec(source, value)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _weights_file(spec: LoraSpec) -> tuple[str, str | None, Path | None]:
    """(what to pass to load_lora_weights, weight_name, the local file) for a local path or hub id."""
    path = Path(spec.id).expanduser()
    if path.is_dir():
        files = sorted(path.glob(f"*{WEIGHTS_SUFFIX}"))
        if len(files) != 1:
            found = ", ".join(f.name for f in files) or "none"
            raise QSchedError(f"LoRA folder {spec.id} must hold exactly one {WEIGHTS_SUFFIX} file (found: {found})",
                              "pass the weights file itself: --lora FOLDER/NAME.safetensors")
        return str(path), files[0].name, files[0]
    if path.exists() or path.suffix:
        if not path.is_file():
            raise QSchedError(f"LoRA file {spec.id} not found", "pass an existing .safetensors file, a folder holding one, or a hub id")
        return str(path.parent), path.name, path
    return spec.id, None, None


def _check_safetensors(spec: LoraSpec, file: Path) -> None:
    # Pickled checkpoints (.bin/.pt/.ckpt) run code when loaded: refuse them, as load_pipeline does.
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            f.keys()
    except Exception:
        raise QSchedError(f"LoRA {spec.id} is not a safetensors file", "convert it to .safetensors (pickled weights are refused)") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def fuse_loras(pipe, specs: tuple[LoraSpec, ...] | list[LoraSpec]) -> tuple[LoraSpec, ...]:
    """Load every LoRA, check that its layers exist in the pipeline, fuse them at their scales and
    drop the adapters. Returns the specs with their weights' sha256."""
    if not specs:
        return ()
    if not hasattr(pipe, "load_lora_weights"):
        raise QSchedError(f"{type(pipe).__name__} cannot load LoRAs", "fuse the LoRA into the checkpoint first")
    resolved = []
    names = []
    for n, spec in enumerate(specs):
        source, weight_name, file = _weights_file(spec)
        if file is not None:
            _check_safetensors(spec, file)
        name = f"qsched_lora_{n}"
        kwargs = {"weight_name": weight_name} if weight_name else {}
        try:
            pipe.load_lora_weights(source, adapter_name=name, use_safetensors=True, **kwargs)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            text = str(exc).strip()
            if "not found in the base model" in text:
                raise QSchedError(f"LoRA {spec.id}'s keys match no layer of this {type(pipe).__name__}",
                                  "pass a LoRA trained for this base model (SD1.5 LoRAs do not fit SDXL, and the reverse)") from None
            if "size mismatch" in text or "loading state_dict" in text:
                raise QSchedError(f"LoRA {spec.id}'s layers do not fit this {type(pipe).__name__} (shape mismatch)",
                                  "pass a LoRA trained for this base model (SD1.5 LoRAs do not fit SDXL, and the reverse)") from None
            first = text.splitlines()[0] if text else type(exc).__name__
            raise QSchedError(f"could not load LoRA {spec.id}: {first}", "pass a diffusers/kohya LoRA .safetensors made for this base model") from None
        if not _adapter_layers(pipe, name):
            raise QSchedError(f"LoRA {spec.id}'s keys match no layer of this {type(pipe).__name__}",
                              "pass a LoRA trained for this base model (SD1.5 LoRAs do not fit SDXL, and the reverse)")
        if file is None:
            file = _hub_file(spec, weight_name)
        resolved.append(LoraSpec(spec.id, spec.scale, _sha256(file)))
        names.append(name)
    pipe.set_adapters(names, adapter_weights=[s.scale for s in specs])
    components = [c for c in ("unet", "transformer", "text_encoder", "text_encoder_2") if getattr(pipe, c, None) is not None]
    pipe.fuse_lora(components=components, adapter_names=names)
    pipe.unload_lora_weights()
    return tuple(resolved)


def _adapter_layers(pipe, adapter: str) -> int:
    """How many layers of the pipeline's models the adapter was injected into."""
    count = 0
    for attr in ("unet", "transformer", "text_encoder", "text_encoder_2"):
        model = getattr(pipe, attr, None)
        if model is not None:
            count += sum(1 for m in model.modules() if adapter in getattr(m, "lora_A", {}))
    return count


def _hub_file(spec: LoraSpec, weight_name: str | None) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(spec.id, weight_name or "pytorch_lora_weights.safetensors"))
