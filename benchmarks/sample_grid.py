"""Image grid and scores of the embedded sample at 2/4/8 steps for FP32, W8A8, W4A8 and W4A8 + Q-Sched.

    python benchmarks/sample_grid.py --out docs/sample_quant_grid.png --json benchmarks/results/sample_grid.json

Quantized UNets use the activation ranges of the shipped samples/shapes-sd/qsched.json (calibrated
at 4 steps); at 2 and 8 steps Q-Sched uses the calibrated ramp ends, linspace(start, end, N), the
paper's parametrisation. Scores: the analyser on the grid's prompts, CLIPScore of both judges,
and CPU seconds per image (batch of the grid's prompts, this machine).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.image_grid import save_image_grid  # noqa: E402
from calibration.judges import load_clip  # noqa: E402
from qsched_export.pipeline import generate, open_backbone  # noqa: E402
from qsched_export.qsched_file import read_qsched  # noqa: E402
from qsched_export.quant import set_activation_ranges  # noqa: E402
from qsched_export.sampler import QSchedCoefficients  # noqa: E402
from samples.train import scenes  # noqa: E402

QSCHED = REPO / "samples" / "shapes-sd" / "qsched.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--steps", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--json", type=Path, required=True)
    args = p.parse_args()

    backbone = open_backbone(None)
    qfile = read_qsched(QSCHED)
    guidance = backbone.guidance.scale
    specs = scenes.heldout_specs(args.prompts, seed=3)
    prompts = [scenes.caption(s) for s in specs]
    fp32_unet = backbone.pipe.unet
    unets = {"FP32": fp32_unet}
    for name in ("w8a8", "w4a8"):
        unet, _ = backbone.scheme_model(name)
        set_activation_ranges(unet, qfile.scheme(name).activation_ranges)
        unets[name.upper()] = unet
    ramp = qfile.scheme("w4a8").ramp
    judges = {j: load_clip(str(REPO / "samples" / "judges" / f"shapes-clip-{j}")) for j in ("a", "b")}
    rows, results = {}, []
    for steps in args.steps:
        qs = QSchedCoefficients.ramp(tuple(ramp["latent_coeff"]), tuple(ramp["output_coeff"]), steps)
        configs = [("FP32", "FP32", None), ("W8A8", "W8A8", None), ("W4A8", "W4A8", None), ("W4A8 + Q-Sched", "W4A8", qs)]
        for label, unet_name, coeffs in configs:
            backbone.pipe.unet = unets[unet_name]
            started = time.perf_counter()
            _, images = generate(backbone, prompts, steps=steps, seed=0, coefficients=coeffs)
            seconds = (time.perf_counter() - started) / len(prompts)
            with torch.no_grad():
                clip = {j: float((100 * (c.image_features(images) * c.text_features(prompts)).sum(-1).clamp(min=0)).mean()) for j, c in judges.items()}
            rows[(steps, label)] = images
            results.append({"steps": steps, "config": label, "analyser": scenes.analyse(images, specs), "clipscore_a": clip["a"],
                            "clipscore_b": clip["b"], "cpu_seconds_per_image": seconds,
                            "coefficients": None if coeffs is None else coeffs.to_dict()})
            print(f"{steps} steps {label:16s} all-correct {results[-1]['analyser']['all']:.2f} CLIP a/b {clip['a']:.1f}/{clip['b']:.1f} {seconds:.3f} s/image", flush=True)
    save_image_grid({f"{steps} steps\n{label}": images for (steps, label), images in rows.items()}, prompts,
                    f"embedded sample, held-out prompts, guidance {guidance}", args.out)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"command": "python benchmarks/sample_grid.py", "guidance": guidance, "prompts": prompts, "rows": [
        {"steps": r["steps"], "config": r["config"], "all_correct": r["analyser"]["all"], "colour": r["analyser"]["colour"],
         "count": r["analyser"]["count"], "clipscore_a": r["clipscore_a"], "clipscore_b": r["clipscore_b"],
         "cpu_s_per_image": r["cpu_seconds_per_image"]} for r in results]}, indent=1))


if __name__ == "__main__":
    main()
