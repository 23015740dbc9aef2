"""The artifact contract: `manifest.json`, written by the exporter and read by every runtime.

An artifact folder is the only thing that crosses from the workstation to the device. Its
manifest says what the graphs compute (family, steps, baked timesteps and Q-Sched
coefficients, scheme), how to feed them (tensor names, static shapes, dtypes, tokenizer ids)
and what each file must hash to. Readers check `schema_version` and the sha256 of every listed
file before running anything.

Torch-free on purpose (stdlib only): a Jetson with only onnxruntime or tensorrt reads it.
"""

from __future__ import annotations

from runtimes.errors import ArtifactError
from runtimes.files import atomic_file, is_owned_temp
from runtimes.schemes import TARGET_FORMS

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath

# 3: the scheme record holds text_weights (a v2 manifest's record would be refused field by field).
SCHEMA_VERSION = 3
MANIFEST_NAME = "manifest.json"
# Written next to the graphs after the manifest, so never hashed into it.
UNHASHED = (MANIFEST_NAME, "parity.json")


@dataclass(frozen=True)
class TensorSpec:
    """A static graph input or output: `shape` (all dims fixed) and numpy `dtype` name."""

    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: dict) -> "TensorSpec":
        return cls(tuple(int(d) for d in data["shape"]), str(data["dtype"]))


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph of the artifact: its file (relative to the artifact folder) and I/O by name,
    in the order the graph declares them."""

    file: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]

    def to_dict(self) -> dict:
        return {"file": self.file, "inputs": {k: v.to_dict() for k, v in self.inputs.items()},
                "outputs": {k: v.to_dict() for k, v in self.outputs.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "GraphSpec":
        return cls(str(data["file"]), {k: TensorSpec.from_dict(v) for k, v in data["inputs"].items()},
                   {k: TensorSpec.from_dict(v) for k, v in data["outputs"].items()})


@dataclass(frozen=True)
class TokenizerSpec:
    """One tokenizer of the artifact: `name` (the pipeline's attribute, e.g. `tokenizer_2`), the
    text graph's `input` it feeds, where it lives (`dir`/`file`, a `tokenizers.Tokenizer.from_file`
    JSON) and how to pad: every prompt becomes exactly `max_length` ids, `[bos] ids eos pad...`
    (`bos_id` None: no bos, as T5 does)."""

    name: str
    input: str
    dir: str
    file: str
    max_length: int
    pad_id: int
    bos_id: int | None
    eos_id: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TokenizerSpec":
        return cls(str(data["name"]), str(data["input"]), str(data["dir"]), str(data["file"]), int(data["max_length"]),
                   int(data["pad_id"]), None if data["bos_id"] is None else int(data["bos_id"]), int(data["eos_id"]))


@dataclass(frozen=True)
class ImageSpec:
    height: int
    width: int
    batch: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ImageSpec":
        return cls(int(data["height"]), int(data["width"]), int(data["batch"]))


@dataclass(frozen=True)
class Manifest:
    """Everything a runtime needs to know about an exported artifact.

    Args:
        tools: versions of the tools that wrote it (qsched_export, torch, diffusers, onnx, onnxruntime).
        model: `{"id", "pipeline_class", "backbone", "family"}`.
        sampler: `SamplerPlan.to_dict()`: timesteps, input divisors, noise steps, constants (all baked in).
        steps, guidance_scale, do_cfg: the sampler settings baked into `denoise.onnx`. With `do_cfg`
            the denoise graph runs classifier-free guidance against the negative prompt's
            conditioning (`negative_prompt`; zeros for SDXL's empty negative), baked in as constants.
        scheme: the quantization scheme's fields (name, weight/activation bits, group size ...).
        target_form: how the scheme is written in the graph: `fp32`, `fp16`, `qdq` or `matmulnbits`.
        coefficients: `{"latent_coeff": [...], "output_coeff": [...]}`, one value per step (baked in).
        image: output image size and batch; latent_shape: `[B, C, h, w]` of `latents`.
        opset: the default-domain ONNX opset of every graph.
        graphs: by role, in the order a runtime runs them, each fed by name from the tokenizers'
            ids, the drawn `latents`/`noise` and the earlier graphs' outputs: `text_encoder`,
            `denoise`, `vae_decoder`, or `pipeline` alone when fused.
        tokenizers: each tokenizer's files, padding rule and the graph input it feeds.
        loras: the LoRAs fused into the weights (`{"id", "scale", "sha256"}` each).
        quantization: the export's report (layers quantized and skipped, bytes before/after).
        golden: the golden parity file (inputs and PyTorch outputs), relative to the folder.
        files: `{relpath: sha256}` of every file in the folder except `UNHASHED`.
    """

    tools: dict[str, str]
    model: dict[str, str]
    sampler: dict
    steps: int
    guidance_scale: float
    do_cfg: bool
    scheme: dict
    target_form: str
    coefficients: dict[str, list[float]]
    image: ImageSpec
    latent_shape: tuple[int, ...]
    opset: int
    graphs: dict[str, GraphSpec]
    tokenizers: tuple[TokenizerSpec, ...]
    negative_prompt: str = ""
    loras: tuple[dict, ...] = ()
    quantization: dict = field(default_factory=dict)
    golden: str = "golden.npz"
    files: dict[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self):
        if self.target_form not in TARGET_FORMS:
            raise ArtifactError(f"manifest target_form {self.target_form!r} is unknown", f"use one of {', '.join(TARGET_FORMS)}")

    @property
    def family(self) -> str:
        return self.model["family"]

    @property
    def backbone(self) -> str:
        return self.model["backbone"]

    @property
    def support_files(self) -> list[str]:
        """Files a runtime opens besides the graphs (relative paths): each tokenizer, the golden data."""
        return [f"{t.dir}/{t.file}" for t in self.tokenizers] + [self.golden]

    @property
    def fused(self) -> bool:
        return "pipeline" in self.graphs

    def graph(self, role: str) -> GraphSpec:
        if role not in self.graphs:
            raise ArtifactError(f"the artifact has no {role} graph (it has: {', '.join(self.graphs)})",
                                "re-export without --fuse" if self.fused else "re-export the artifact")
        return self.graphs[role]

    def to_dict(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "tools": dict(self.tools),
            "model": dict(self.model),
            "sampler": self.sampler,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "do_cfg": self.do_cfg,
            "negative_prompt": self.negative_prompt,
            "scheme": self.scheme,
            "target_form": self.target_form,
            "coefficients": {k: list(v) for k, v in self.coefficients.items()},
            "image": self.image.to_dict(),
            "latent_shape": list(self.latent_shape),
            "opset": self.opset,
            "graphs": {k: v.to_dict() for k, v in self.graphs.items()},
            "tokenizers": [t.to_dict() for t in self.tokenizers],
            "loras": [dict(x) for x in self.loras],
            "quantization": self.quantization,
            "golden": self.golden,
            "files": dict(sorted(self.files.items())),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> "Manifest":
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ArtifactError(f"manifest schema_version {version!r} is not supported (this reader knows {SCHEMA_VERSION})",
                                "re-export the artifact with this qsched-export version, or install the version that wrote it")
        try:
            return cls(
                tools=dict(data["tools"]), model=dict(data["model"]), sampler=dict(data["sampler"]), steps=int(data["steps"]),
                guidance_scale=float(data["guidance_scale"]), do_cfg=bool(data["do_cfg"]), scheme=dict(data["scheme"]),
                target_form=str(data["target_form"]),
                coefficients={k: [float(x) for x in v] for k, v in data["coefficients"].items()},
                image=ImageSpec.from_dict(data["image"]), latent_shape=tuple(int(d) for d in data["latent_shape"]),
                opset=int(data["opset"]), graphs={k: GraphSpec.from_dict(v) for k, v in data["graphs"].items()},
                tokenizers=tuple(TokenizerSpec.from_dict(t) for t in data["tokenizers"]), negative_prompt=str(data.get("negative_prompt", "")),
                loras=tuple(dict(x) for x in data.get("loras", [])),
                quantization=dict(data.get("quantization", {})), golden=str(data.get("golden", "golden.npz")),
                files={str(k): str(v) for k, v in data.get("files", {}).items()}, schema_version=int(version),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"manifest is malformed ({type(exc).__name__}: {exc})", "re-export the artifact") from None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# A manifest is a few KB to a few MB (per-layer quantization report); anything far larger is not one.
MAX_MANIFEST_BYTES = 64 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_REEXPORT = "re-export the artifact"


def hash_folder(artifact_dir: str | Path, exclude: tuple[str, ...] = UNHASHED) -> dict[str, str]:
    """sha256 of every regular file under `artifact_dir` (POSIX relative paths), except `exclude`
    and the temp files of a write in progress. A symlink is refused: the manifest lists files that
    live in the folder, so copying the folder copies the artifact."""
    root = Path(artifact_dir)
    hashes = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            raise ArtifactError(f"{root} holds the symbolic link {rel}", "artifact folders hold regular files only: copy the file in instead")
        if p.is_file() and rel not in exclude and not is_owned_temp(p.name):
            hashes[rel] = sha256_file(p)
    return hashes


def write_manifest(artifact_dir: str | Path, manifest: Manifest) -> Manifest:
    """Hash every file now in `artifact_dir` into `manifest.files` and write `manifest.json`
    atomically (temp file, then rename). Call it last, after every other file is written.
    Returns the manifest as written."""
    root = Path(artifact_dir)
    written = replace(manifest, files=hash_folder(root))
    check_paths(root, written)
    with atomic_file(root / MANIFEST_NAME, artifact_writer=True) as f:
        f.write(written.to_json())
    return written


def artifact_path(root: str | Path, rel: str) -> Path:
    """`root / rel` for a path the manifest names, once it is known to stay inside `root`: a
    non-empty relative POSIX path without `..`, whose real path (symlinks followed) is inside
    `root`'s. Raises `ArtifactError` otherwise. Runtimes open artifact files through this."""
    root = Path(root)
    parts = PurePosixPath(rel).parts if isinstance(rel, str) else ()
    if not parts or PurePosixPath(rel).is_absolute() or ".." in parts or "\\" in rel:
        raise ArtifactError(f"manifest path {rel!r} is not a relative path inside the artifact folder",
                            f"{_REEXPORT}: every path in manifest.json is relative to its folder")
    path = root / rel
    real_root, real = root.resolve(), path.resolve()
    if real_root not in real.parents:
        raise ArtifactError(f"manifest path {rel!r} leads out of the artifact folder (through a symbolic link)",
                            f"{_REEXPORT}; artifact folders hold regular files only")
    return path


def opened_files(manifest: Manifest) -> list[str]:
    """The paths, relative to the artifact folder, that a runtime opens: every graph and the
    `support_files` (tokenizers, golden data). External data a graph references is added by
    `verify_files`, which reads it from the verified graphs."""
    return [*(spec.file for spec in manifest.graphs.values()), *manifest.support_files]


def check_paths(root: str | Path, manifest: Manifest) -> None:
    """Every path the manifest names (the files a runtime opens and the `files` keys) stays inside `root`."""
    for rel in [*opened_files(manifest), *manifest.files]:
        artifact_path(root, rel)


def _read_manifest_data(path: Path) -> dict:
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{path} is {size / 1e6:.0f} MB, far too large to be a manifest", "copy the artifact folder again, or re-export it")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ArtifactError(f"{path} is not UTF-8 text (a binary or corrupted file)", "copy the artifact folder again, or re-export it") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"manifest is not valid JSON ({exc.msg} at line {exc.lineno})", _REEXPORT) from None
    if not isinstance(data, dict):
        raise ArtifactError("manifest must hold a JSON object", _REEXPORT)
    files = data.get("files", {})
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) and _SHA256.match(v) for k, v in files.items()):
        shown = "null" if files is None else type(files).__name__ if not isinstance(files, dict) else "an entry without a sha256"
        raise ArtifactError(f"manifest 'files' must map each path to its sha256, got {shown}", _REEXPORT)
    return data


def load_manifest(artifact_dir: str | Path, verify: bool = True) -> Manifest:
    """Read `manifest.json` from `artifact_dir` and check that every path it names stays inside
    the folder; with `verify`, also that every listed file exists with its recorded sha256 and
    that every file a runtime opens is listed (`verify_files`). Every problem is an
    `ArtifactError` of one line."""
    root = Path(artifact_dir)
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(f"{root} has no {MANIFEST_NAME}", "pass a folder written by qsched-export export or build")
    manifest = Manifest.from_dict(_read_manifest_data(path))
    check_paths(root, manifest)
    if verify:
        verify_files(root, manifest)
    return manifest


def verify_files(artifact_dir: str | Path, manifest: Manifest) -> None:
    """Check every listed file (present, regular, its sha256), then that every file a runtime opens,
    including the external data its ONNX graphs reference, is listed if it is there. Mismatches are
    named at once."""
    root = Path(artifact_dir)
    if not manifest.files:
        raise ArtifactError(f"the manifest of {root} lists no files, so nothing can be verified", _REEXPORT)
    missing, changed = [], []
    for rel, expected in manifest.files.items():
        p = artifact_path(root, rel)
        if not p.is_file():
            missing.append(rel)
        elif sha256_file(p) != expected:
            changed.append(rel)
    if missing or changed:
        parts = ([f"missing: {', '.join(missing)}"] if missing else []) + ([f"sha256 mismatch: {', '.join(changed)}"] if changed else [])
        raise ArtifactError(f"artifact {root} does not match its manifest ({'; '.join(parts)})",
                            "copy the artifact folder again, or re-export it")
    # A needed file that is absent fails where it is opened, with its own message; one that is
    # present must be listed, or nothing vouches for its content.
    unlisted = [rel for rel in [*opened_files(manifest), *_external_data(root, manifest)]
                if rel not in manifest.files and artifact_path(root, rel).exists()]
    if unlisted:
        raise ArtifactError(f"artifact {root} uses files its manifest does not list with a sha256: {', '.join(dict.fromkeys(unlisted))}",
                            _REEXPORT)


def _external_data(root: Path, manifest: Manifest) -> list[str]:
    """The external-data files the (verified) ONNX graphs reference, relative to the artifact folder."""
    from runtimes.onnx_external import external_data_locations

    found = []
    for spec in manifest.graphs.values():
        if not spec.file.endswith(".onnx") or spec.file not in manifest.files:
            continue
        try:
            locations = external_data_locations(root / spec.file)
        except ValueError:
            continue  # not ONNX at all: ONNX Runtime refuses it when the runner opens it, naming the file
        for location in locations:
            rel = (PurePosixPath(spec.file).parent / location).as_posix()
            artifact_path(root, rel)
            found.append(rel)
    return found
