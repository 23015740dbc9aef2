"""Built artifacts side by side on ONNX Runtime, in one process: latency per image and per
denoise call (warm-up, then the median of N runs), artifact size, and the parity verdict.

Build the artifacts first, e.g. for the embedded sample:

    qsched-export build --target onnxruntime --bits 32 --out out/bench/fp32
    qsched-export build --target onnxruntime --bits 8  --out out/bench/int8
    qsched-export build --target onnxruntime --bits 4  --out out/bench/int4
    python benchmarks/runtime_latency.py out/bench/fp32 out/bench/int8 out/bench/int4 --json out/bench/runtime.json

The first artifact is the baseline of the speed-up column. Torch-free (runtimes/ only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtimes.parity import check_artifact, load_golden  # noqa: E402
from runtimes.pipeline import Text2ImagePipeline  # noqa: E402


def median_seconds(fn, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(artifact: Path, providers: list[str], repeats: int, warmup: int) -> dict:
    pipe = Text2ImagePipeline(artifact, providers)
    golden = load_golden(artifact / pipe.manifest.golden)
    feeds = {name: golden[name] for name in pipe.input_names}
    result = {"artifact": str(artifact), "scheme": pipe.manifest.scheme.get("name"), "target_form": pipe.manifest.target_form,
              "weight_range": pipe.manifest.scheme.get("weight_range"), "int8_attention": pipe.manifest.scheme.get("int8_attention"),
              "text_weights": pipe.manifest.scheme.get("text_weights", "float"), "runtime": pipe.description, "steps": pipe.manifest.steps,
              "graph_bytes": {role: (artifact / spec.file).stat().st_size for role, spec in pipe.manifest.graphs.items()},
              "image_seconds": median_seconds(lambda: pipe.run(feeds), repeats, warmup)}
    if not pipe.manifest.fused:
        # The denoise graph alone on the golden conditioning (one call runs every unrolled step).
        denoise = pipe.runners["denoise"]
        denoise_feeds = {name: golden[name] for name in denoise.input_names}
        result["denoise_seconds"] = median_seconds(lambda: denoise.run(denoise_feeds), repeats, warmup)
    report = check_artifact(artifact, providers, write=False, raise_on_failure=False)
    result["parity"] = report.to_dict()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="+", type=Path)
    parser.add_argument("--provider", default="cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    rows = [measure(a, [args.provider], args.repeats, args.warmup) for a in args.artifacts]
    base = rows[0]
    print(f"{'artifact':<28} {'scheme':<7} {'MB':>7} {'image s':>9} {'denoise s':>10} {'speed-up':>9}  parity")
    for r in rows:
        mb = sum(r["graph_bytes"].values()) / 1e6
        speed = base["image_seconds"] / r["image_seconds"]
        print(f"{Path(r['artifact']).name:<28} {r['scheme']:<7} {mb:7.2f} {r['image_seconds']:9.4f} {r.get('denoise_seconds', float('nan')):10.4f} "
              f"{speed:8.2f}x  {'PASSED' if r['parity']['passed'] else 'FAILED'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        import onnxruntime

        from runtimes import cpu

        meta = {"machine": cpu.probe().to_dict(), "cores": os.cpu_count(), "onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
                "numpy": np.__version__, "repeats": args.repeats, "warmup": args.warmup}
        args.json.write_text(json.dumps({"meta": meta, "results": rows}, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
