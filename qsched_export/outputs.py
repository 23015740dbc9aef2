"""Where outputs go when `--out` is not given: one rule for every command.

Everything qsched-export writes by default lands under `./out/`, named after the model (the
embedded samples by their folder name, a local folder by its name, a hub id by its last part):

    calibrate                -> out/<model>.qsched.json
    export                   -> out/<model>-<scheme>-<steps>step
    build --target T         -> out/<model>-<T>-<scheme>
    bundle                   -> out/<model>-tensorrt-<scheme>-bundle

`<scheme>` is the scheme's name plus the options that change its graphs (`Scheme.folder_tag`:
w8a8, w8a8-int8attn, w8a8-int8text). Coefficients are looked up in the same places the defaults
write them: `--coeffs`, else the model folder's own `qsched.json`, else `out/<model>.qsched.json`.
"""

from __future__ import annotations

from pathlib import Path

OUT_ROOT = Path("out")
SAMPLE_NAME = "shapes-sd"


def model_name(model: str | None) -> str:
    return SAMPLE_NAME if model is None else Path(str(model).rstrip("/")).name


def qsched_path(model: str | None) -> Path:
    return OUT_ROOT / f"{model_name(model)}.qsched.json"


def export_dir(model: str | None, scheme: str, steps: int) -> Path:
    return OUT_ROOT / f"{model_name(model)}-{scheme}-{steps}step"


def build_dir(model: str | None, target: str, scheme: str) -> Path:
    return OUT_ROOT / f"{model_name(model)}-{target}-{scheme}"


def bundle_dir(model: str | None, scheme: str) -> Path:
    return OUT_ROOT / f"{model_name(model)}-tensorrt-{scheme}-bundle"
