"""Sharded calibration on several GPUs of one host: `qsched-export calibrate --nproc N`
(torch.distributed, nccl, one process per GPU), each run in a fresh process, on 1..N GPUs and
several grid sizes, with the chosen coefficients compared to the first GPU count's.

    python benchmarks/calibration_scaling.py --nproc 1 2 --grid 20 50 --out benchmarks/results/calibration_scaling.json
    python benchmarks/calibration_scaling.py --sd15 --judge samples/judges/shapes-clip-a --grid 8 --batch-size 32 --out ...

`--sd15` builds the SD1.5-sized UNet + VAE with random weights (as benchmarks/gpu_latency.py does)
and calibrates that instead of `--model`.

Per run: the search time on rank 0 (`search.seconds` in qsched.json: the fake-quant copy, its
observed ranges and the grid + refinement), the whole call's wall time (process start, model and
judge loading included), grid points per second and the scaling efficiency against 1 GPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="diffusers folder (default: the embedded sample)")
    p.add_argument("--judge", help="open_clip folder or NAME@PRETRAINED (default: the sample's judge for the sample, else ViT-L-14@openai)")
    p.add_argument("--guidance", type=float, help="guidance scale (default: the model's)")
    p.add_argument("--scheme", default="w8a8")
    p.add_argument("--nproc", type=int, nargs="+", default=[1, 2], help="GPU counts; the first is the reference")
    p.add_argument("--grid", type=int, nargs="+", default=[20, 50])
    p.add_argument("--batch-size", type=int, default=512, help="images per denoiser call")
    p.add_argument("--sd15", action="store_true", help="an SD1.5-sized UNet + VAE with random weights instead of --model")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() < max(args.nproc):
        p.error(f"--nproc {max(args.nproc)} needs as many CUDA devices, this machine has {torch.cuda.device_count() if torch.cuda.is_available() else 0}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="calib-scaling-") as tmp:
        if args.sd15:
            from benchmarks.gpu_latency import FULL, build_model

            args.model = str(build_model(Path(tmp) / "sd15", FULL))
        for grid in args.grid:
            reference = None
            for nproc in args.nproc:
                out = Path(tmp) / f"g{grid}-n{nproc}.json"
                command = [sys.executable, "-m", "qsched_export", "calibrate", "--scheme", args.scheme, "--grid", str(grid), "--device", "cuda",
                           "--nproc", str(nproc), "--batch-size", str(args.batch_size), "--out", str(out)]
                for flag, value in (("--model", args.model), ("--judge", args.judge), ("--guidance", args.guidance)):
                    command += [flag, str(value)] if value is not None else []
                start = time.perf_counter()
                subprocess.run(command, check=True, cwd=REPO)
                wall = time.perf_counter() - start
                entry = json.loads(out.read_text())["schemes"][args.scheme]
                search = entry["search"]
                chosen = {"latent_coeff": entry["latent_coeff"], "output_coeff": entry["output_coeff"], "jaq": entry["jaq"]["qsched"]["jaq"]}
                reference = reference or (nproc, chosen, search["seconds"])
                row = {"grid": grid, "gpus": nproc, "evaluations": search["evaluations"], "search_s": search["seconds"], "wall_s": round(wall, 2),
                       "points_per_s": search["evaluations"] / search["seconds"],
                       "speedup": reference[2] / search["seconds"], "efficiency": reference[2] / search["seconds"] / (nproc / reference[0]),
                       "same_coefficients": chosen == reference[1], "jaq": chosen["jaq"]}
                rows.append(row)
                print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    report = {"title": "Sharded calibration on several GPUs", "command": "python benchmarks/calibration_scaling.py " + " ".join(sys.argv[1:]),
              "device": f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}", "model": "SD1.5-sized UNet + VAE, random weights" if args.sd15 else (args.model or "samples/shapes-sd"),
              "scheme": args.scheme, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
