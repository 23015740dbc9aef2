"""`quality.py --append`: rows from another device session join a table only when they share its settings."""

from __future__ import annotations

import json
import sys
from argparse import Namespace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.quality import _previous_runs  # noqa: E402

SETTINGS = {"prompts": 1024, "seeds": 2, "guidance": 1.5, "grid": 20, "range": [0.8, 1.2], "batch": 512, "calib_batch": 1024, "smoothquant_alpha": 0.5,
            "inception_weights": None}


def _args(out: Path, **changes) -> Namespace:
    return Namespace(**{**SETTINGS, "steps": [8], "schemes": ["w8a8"], "out": out, **changes})


def _write(path: Path, finished: bool = True) -> Path:
    data = {"config": {**SETTINGS, "steps": [4]}, "runs": [{"name": "fp32", "steps": 4}]}
    path.write_text(json.dumps({**data, "seconds": 12.5} if finished else data))
    return path


def test_a_compatible_table_is_returned(tmp_path):
    previous = _previous_runs(_args(_write(tmp_path / "q.json"), schemes=["w4a8"]))  # other schemes may be added
    assert previous["config"]["steps"] == [4] and previous["seconds"] == 12.5 and len(previous["runs"]) == 1


@pytest.mark.parametrize("case,message", [
    ("missing", "needs an existing --out file"),
    ("cut short", "was cut short"),
    ("other prompts", "different prompts"),
])
def test_incompatible_tables_are_refused(tmp_path, case, message):
    out = tmp_path / "q.json"
    if case != "missing":
        _write(out, finished=case != "cut short")
    args = _args(out, prompts=64) if case == "other prompts" else _args(out)
    with pytest.raises(SystemExit) as info:
        _previous_runs(args)
    assert message in str(info.value)
