"""One way the benchmarks write their JSON results (`--out`)."""

from __future__ import annotations

import json
from pathlib import Path


def write_results(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {path}")
