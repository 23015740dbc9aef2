"""`qsched.json`: the calibrated Q-Sched coefficients of one model, for one step count and several schemes.

One file serves several bit-widths: `schemes` maps a scheme name (`w8a8`, `w4a8`, ...) to its
coefficients, ramp ends, JAQ before/after, search settings and activation ranges. Calibration
writes it, export and build read it, and `generate --coeffs` takes it (or a bare
`{"latent_coeff": [...], "output_coeff": [...]}` file).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from qsched_export.errors import QSchedError
from runtimes.files import atomic_file
from qsched_export.plan import QSchedCoefficients

FORMAT = "qsched"
VERSION = 1


@dataclass(frozen=True)
class SchemeEntry:
    """Calibration result for one scheme. `activation_ranges` maps a quantized module's name to
    its calibrated `{"input_amax": float, "output_amax": float}` (keys present as the scheme needs)."""

    coefficients: QSchedCoefficients
    ramp: dict = field(default_factory=dict)
    jaq: dict = field(default_factory=dict)
    search: dict = field(default_factory=dict)
    activation_ranges: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {**self.coefficients.to_dict(), "ramp": self.ramp, "jaq": self.jaq, "search": self.search, "activation_ranges": self.activation_ranges}

    @classmethod
    def from_dict(cls, data: dict) -> "SchemeEntry":
        return cls(QSchedCoefficients(tuple(map(float, data["latent_coeff"])), tuple(map(float, data["output_coeff"]))),
                   data.get("ramp", {}), data.get("jaq", {}), data.get("search", {}), data.get("activation_ranges", {}))


@dataclass(frozen=True)
class QSchedFile:
    """Args:
        model: the model id calibrated (`samples/<name>` for an embedded sample).
        family, steps, guidance_scale: the sampler calibrated.
        schemes: one `SchemeEntry` per scheme name.
        sampler_plan: `SamplerPlan.to_dict()` of the calibrated sampler (None in files that predate it).
        loras: the LoRAs fused into the calibrated weights (`LoraSpec.to_dict()` each).
        extra: any other top-level keys, kept as they are.
    """

    model: str
    family: str
    steps: int
    guidance_scale: float
    schemes: dict[str, SchemeEntry]
    sampler_plan: dict | None = None
    loras: tuple[dict, ...] = ()
    extra: dict = field(default_factory=dict)

    def scheme(self, name: str) -> SchemeEntry:
        if name not in self.schemes:
            have = ", ".join(sorted(self.schemes)) or "none"
            raise QSchedError(f"scheme {name} is not calibrated in this qsched.json (it has: {have})", f"run qsched-export calibrate --scheme {name}")
        return self.schemes[name]

    def mismatches(self, *, model: str, plan: dict, guidance_scale: float, loras: tuple[dict, ...]) -> list[str]:
        """What differs between this calibration and a run (empty when the coefficients apply):
        the model, the sampler (family, steps, its options such as TCD's gamma, every baked
        constant), the guidance and the fused LoRAs (ids, scales, weights)."""
        out = []
        if Path(str(self.model)).name != Path(model).name:
            out.append(f"model {self.model} vs {model}")
        if self.family != plan["family"]:
            out.append(f"sampler {self.family} vs {plan['family']}")
        if self.steps != len(plan["timesteps"]):
            out.append(f"{self.steps} steps vs {len(plan['timesteps'])}")
        if self.sampler_plan is not None and self.family == plan["family"] and self.steps == len(plan["timesteps"]):
            for key in sorted(set(self.sampler_plan.get("options", {})) | set(plan.get("options", {}))):
                a, b = self.sampler_plan.get("options", {}).get(key), plan.get("options", {}).get(key)
                if a != b:
                    out.append(f"{key} {a} vs {b}")
            if not out and not _same_constants(self.sampler_plan, plan):
                out.append("sampler constants (timesteps or sigmas) differ")
        if self.guidance_scale != guidance_scale:
            out.append(f"guidance {self.guidance_scale:g} vs {guidance_scale:g}")
        if [_lora_key(x) for x in self.loras] != [_lora_key(x) for x in loras]:
            def names(xs):
                return ", ".join(f"{x['id']}:{x['scale']:g}" for x in xs) or "no LoRA"
            out.append(f"LoRA {names(self.loras)} vs {names(loras)}")
        return out

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "model": self.model, "family": self.family, "steps": self.steps,
                "guidance_scale": self.guidance_scale, "schemes": {k: v.to_dict() for k, v in self.schemes.items()},
                **({"sampler_plan": self.sampler_plan} if self.sampler_plan is not None else {}),
                "loras": [dict(x) for x in self.loras], **self.extra}


def _same_constants(a: dict, b: dict) -> bool:
    """Whether two plans bake the same sampler. Float32 constants may differ in the last bit between
    machines and torch builds (vectorised sqrt): compare them to 1e-6, which any real change
    (another gamma, shift or schedule) exceeds by orders of magnitude."""
    if a["noise_steps"] != b["noise_steps"] or sorted(a["constants"]) != sorted(b["constants"]):
        return False
    pairs = [(a["timesteps"], b["timesteps"]), (a["input_divisors"], b["input_divisors"])] + [(a["constants"][k], b["constants"][k]) for k in a["constants"]]
    return all(len(x) == len(y) and all(math.isclose(u, v, rel_tol=1e-6, abs_tol=1e-9) for u, v in zip(x, y)) for x, y in pairs)


def _lora_key(lora: dict) -> tuple:
    return (Path(str(lora["id"])).name, float(lora["scale"]), lora.get("sha256", ""))


def read_qsched(path: str | Path) -> QSchedFile:
    data = _read_json(path)
    if data.get("format") != FORMAT:
        raise QSchedError(f"{path} is not a qsched.json file", "pass a file written by qsched-export calibrate")
    return _parse_qsched(path, data)


def _parse_qsched(path: str | Path, data: dict) -> QSchedFile:
    if data.get("version") != VERSION:
        raise QSchedError(f"{path} has qsched.json version {data.get('version')}, this tool reads version {VERSION}", "recalibrate with this version")
    known = {"format", "version", "model", "family", "steps", "guidance_scale", "schemes", "sampler_plan", "loras"}
    try:
        return QSchedFile(data["model"], data["family"], int(data["steps"]), float(data["guidance_scale"]),
                          {k: SchemeEntry.from_dict(v) for k, v in data["schemes"].items()}, data.get("sampler_plan"),
                          tuple(dict(x) for x in data.get("loras", [])), {k: v for k, v in data.items() if k not in known})
    except (KeyError, TypeError, ValueError) as exc:
        raise QSchedError(f"{path} is malformed ({exc})", "recalibrate to rewrite it") from None


def write_qsched(path: str | Path, qfile: QSchedFile) -> None:
    """Write atomically: a temp file in the same folder, then rename, so an interrupted run
    leaves the previous file intact."""
    with atomic_file(path) as f:
        json.dump(qfile.to_dict(), f, indent=2)
        f.write("\n")


def read_coefficient_file(path: str | Path) -> QSchedFile | QSchedCoefficients:
    """A qsched.json, or a bare `{"latent_coeff": [...], "output_coeff": [...]}` file, read once."""
    data = _read_json(path)
    if data.get("format") == FORMAT:
        return _parse_qsched(path, data)
    try:
        return QSchedCoefficients(tuple(map(float, data["latent_coeff"])), tuple(map(float, data["output_coeff"])))
    except (KeyError, TypeError, ValueError):
        raise QSchedError(f"{path} has no latent_coeff/output_coeff lists", "write {\"latent_coeff\": [...], \"output_coeff\": [...]}") from None


def coefficients_for(source: QSchedFile | QSchedCoefficients, steps: int, scheme: str | None = None) -> QSchedCoefficients:
    """The coefficients of `source` for `steps`: a qsched.json's `scheme` (or its only scheme)."""
    if isinstance(source, QSchedFile):
        if scheme is None:
            if len(source.schemes) != 1:
                raise QSchedError(f"the qsched.json holds schemes {', '.join(sorted(source.schemes))}", "pick one with --scheme")
            scheme = next(iter(source.schemes))
        source = source.scheme(scheme).coefficients
    return source.check_steps(steps)


def _read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise QSchedError(f"coefficient file {path} not found", "pass an existing qsched.json")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise QSchedError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})", "fix or regenerate the file") from None
    if not isinstance(data, dict):
        raise QSchedError(f"{path} must hold a JSON object", "write {\"latent_coeff\": [...], \"output_coeff\": [...]}")
    return data
