"""calibrate end to end on the tiny pipeline: qsched.json structure, merging, 2-process gloo, bad input."""

from __future__ import annotations

import json
import os

import pytest
import typer
from typer.testing import CliRunner

from qsched_export.cli.calibrate import register
from qsched_export.qsched_file import read_qsched

GRID = ["--grid", "3", "--steps", "2", "--guidance", "2", "--no-refine"]


@pytest.fixture(scope="module")
def cli():
    app = typer.Typer()
    app.callback()(lambda: None)  # keep `calibrate` a subcommand, as in the real app
    register(app)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["calibrate", *map(str, args)])


def _common(a):
    return ["--model", a / "sd", "--prompts", a / "prompts.txt", "--judge", a / "judge"]


@pytest.fixture(scope="module")
def calibrated(cli, tiny_assets, tmp_path_factory):
    """w8a8 first, then w4a8 into the same file (the merge)."""
    out = tmp_path_factory.mktemp("out") / "qsched.json"
    first = cli("--bits", 8, *_common(tiny_assets), *GRID, "--out", out, "--heatmap", out.with_suffix(".png"))
    assert first.exit_code == 0, first.output
    w8 = json.loads(out.read_text())
    second = cli("--bits", 4, *_common(tiny_assets), *GRID, "--out", out)
    assert second.exit_code == 0, second.output
    return out, w8, first.output


def test_qsched_json_structure(calibrated):
    out, w8_only, output = calibrated
    assert list(w8_only["schemes"]) == ["w8a8"]
    q = read_qsched(out)
    assert sorted(q.schemes) == ["w4a8", "w8a8"] and q.steps == 2 and q.family == "lcm" and q.guidance_scale == 2.0
    data = json.loads(out.read_text())
    assert data["schemes"]["w8a8"] == w8_only["schemes"]["w8a8"]  # the merge kept the first scheme as it was
    for name, e in data["schemes"].items():
        assert len(e["latent_coeff"]) == len(e["output_coeff"]) == 2
        assert e["latent_coeff"][0] == e["ramp"]["latent_coeff"][0] and e["output_coeff"][-1] == e["ramp"]["output_coeff"][1]
        assert {"fp32", "naive", "qsched"} <= set(e["jaq"]) and e["jaq"]["k"] == 2.0
        # The 3x3 grid's centre is the unscaled sampler: it scores the naive JAQ, and the optimum at least that.
        assert e["search"]["grid_jaq"][1][1] == pytest.approx(e["jaq"]["naive"]["jaq"], abs=1e-5)
        assert e["jaq"]["qsched"]["jaq"] >= e["search"]["grid_jaq"][1][1]
        s = e["search"]
        assert s["grid"] == 3 and len(s["grid_jaq"]) == 3 and len(s["grid_jaq"][0]) == 3 and s["evaluations"] == 9
        assert s["prompts"] == ["two small red circles on a blue background", "a green square"] and s["seed"] == 0
        assert s["latent_starts"] == pytest.approx([0.8, 1.0, 1.2]) and s["seconds"] > 0
        assert max(max(r) for r in s["grid_jaq"]) == pytest.approx(e["jaq"]["qsched"]["jaq"])
    # One range entry per quantized layer (static int8 input and output amax), and nothing else.
    quantized = data["schemes"]["w8a8"]["search"]["quantization"]["quantized"]
    ranges = data["schemes"]["w8a8"]["activation_ranges"]
    assert sorted(ranges) == sorted(quantized) and all(r["input_amax"] > 0 and r["output_amax"] > 0 for r in ranges.values())
    assert data["schemes"]["w4a8"]["activation_ranges"] == {}  # dynamic activations
    assert out.with_suffix(".png").stat().st_size > 1000
    assert "Q-Sched calibration" in output


def test_edge_warning_is_one_line(calibrated):
    out, _, output = calibrated
    on_edge = json.loads(out.read_text())["schemes"]["w8a8"]["search"]["on_edge"]
    warnings = [ln for ln in output.splitlines() if ln.startswith("warning:")]
    assert bool(on_edge) == bool(warnings)
    if on_edge:
        assert "edge of the search range" in warnings[0] and "--range" in warnings[0]


@pytest.mark.parametrize("args,message", [
    (["--bits", 3], "bits must be 4, 8 or 16, got 3"),
    (["--bits", 32], "nothing to calibrate"),
    (["--grid", 1], "grid must be >= 2"),
    (["--range", 1.2, 0.8], "must be below its end"),
    (["--range", -0.5, 1.2], "must be positive"),
    (["--k", -1], "k must be a finite number >= 0"),
    (["--scheme", "w2a2"], "unknown scheme 'w2a2'"),
    (["--prompts", "MISSING"], "not found"),
    (["--prompts", "EMPTY"], "has no prompts"),
    (["--judge", "NOWEIGHTS"], "has no weights"),
    (["--judge", "NotAModel"], "neither a folder nor an open_clip model"),
])
def test_bad_input_is_one_line_and_keeps_the_file(cli, calibrated, tiny_assets, tmp_path, args, message):
    out, _, _ = calibrated
    before = out.read_bytes()
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "open_clip_config.json").write_text("{}")
    subst = {"MISSING": tmp_path / "missing.txt", "EMPTY": empty, "NOWEIGHTS": tmp_path / "noweights"}
    args = [subst.get(a, a) if isinstance(a, str) else a for a in args]
    result = cli(*_common(tiny_assets), *GRID, "--out", out, *args)
    assert result.exit_code == 1
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert lines[-1].startswith("error:") and message in " ".join(lines), result.output
    assert "Traceback" not in result.output
    assert out.read_bytes() == before


def test_other_setting_refuses_to_merge(cli, calibrated, tiny_assets):
    out, _, _ = calibrated
    before = out.read_bytes()
    result = cli("--bits", 8, *_common(tiny_assets), "--grid", 3, "--steps", 3, "--guidance", 2, "--no-refine", "--out", out)
    assert result.exit_code == 1 and "another setting" in result.output and "2 steps vs 3" in result.output
    assert out.read_bytes() == before


def test_two_gloo_processes_equal_one(tiny_assets, tmp_path):
    from calibration.api import CalibrationConfig, calibrate
    from calibration.search import SearchSpace

    import torch

    results = {}
    threads = torch.get_num_threads()
    # Float reductions depend on the thread count: give the one process what each of the two gets
    # (calibrate splits the cores between its processes), so the comparison can be bit for bit.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    try:
        for nproc in (1, 2):
            config = CalibrationConfig(model=str(tiny_assets / "sd"), schemes=("w4a8",), steps=2, prompts_file=tiny_assets / "prompts.txt",
                                       space=SearchSpace(grid=2), refine=False, judge=str(tiny_assets / "judge"), guidance=2.0,
                                       out=tmp_path / f"q{nproc}.json", nproc=nproc, batch_size=2, progress=False)
            calibrate(config)
            results[nproc] = json.loads((tmp_path / f"q{nproc}.json").read_text())["schemes"]["w4a8"]
    finally:
        torch.set_num_threads(threads)
    one, two = results[1], results[2]
    assert two["search"]["processes"] == 2 and one["search"]["processes"] == 1
    assert two["search"]["grid_jaq"] == one["search"]["grid_jaq"]  # bit for bit
    assert two["latent_coeff"] == one["latent_coeff"] and two["output_coeff"] == one["output_coeff"]
