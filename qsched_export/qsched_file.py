"""`qsched.json`: the calibrated Q-Sched coefficients of one model, for one step count and several schemes.

One file serves several bit-widths: `schemes` maps a scheme name (`w8a8`, `w4a8`, ...) to its
coefficients, ramp ends, JAQ before/after, search settings and activation ranges. Calibration
writes it, export and build read it, and `generate --coeffs` takes it (or a bare
`{"latent_coeff": [...], "output_coeff": [...]}` file).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from qsched_export.errors import QSchedError
from runtimes.files import atomic_file
from qsched_export.sampler.plan import QSchedCoefficients

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
    model: str
    family: str
    steps: int
    guidance_scale: float
    schemes: dict[str, SchemeEntry]
    extra: dict = field(default_factory=dict)

    def scheme(self, name: str) -> SchemeEntry:
        if name not in self.schemes:
            have = ", ".join(sorted(self.schemes)) or "none"
            raise QSchedError(f"scheme {name} is not calibrated in this qsched.json (it has: {have})", f"run qsched-export calibrate --scheme {name}")
        return self.schemes[name]

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "model": self.model, "family": self.family, "steps": self.steps,
                "guidance_scale": self.guidance_scale, "schemes": {k: v.to_dict() for k, v in self.schemes.items()}, **self.extra}


def read_qsched(path: str | Path) -> QSchedFile:
    data = _read_json(path)
    if data.get("format") != FORMAT:
        raise QSchedError(f"{path} is not a qsched.json file", "pass a file written by qsched-export calibrate")
    return _parse_qsched(path, data)


def _parse_qsched(path: str | Path, data: dict) -> QSchedFile:
    if data.get("version") != VERSION:
        raise QSchedError(f"{path} has qsched.json version {data.get('version')}, this tool reads version {VERSION}", "recalibrate with this version")
    known = {"format", "version", "model", "family", "steps", "guidance_scale", "schemes"}
    try:
        return QSchedFile(data["model"], data["family"], int(data["steps"]), float(data["guidance_scale"]),
                          {k: SchemeEntry.from_dict(v) for k, v in data["schemes"].items()},
                          {k: v for k, v in data.items() if k not in known})
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
