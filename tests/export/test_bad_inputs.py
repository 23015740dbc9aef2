"""`qsched-export export` refuses bad input with one line and exit 1, and leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from export_cases import QUANT_FAMILY, STEPS
from typer.testing import CliRunner

from qsched_export.cli import app

runner = CliRunner()


def _one_line_error(result, *needles):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    text = " ".join(result.output.split())
    for needle in needles:
        assert needle in text, text


def _export(model: Path, qsched: Path, out: Path, *extra: str):
    return runner.invoke(app, ["export", "--model", str(model), "--coeffs", str(qsched), "--steps", str(STEPS), "--gamma", "0.3",
                               "--out", str(out), *extra])


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


def test_int4_below_opset_21_is_refused(calibrated, tmp_path):
    model, qsched = calibrated(QUANT_FAMILY)
    result = _export(model, qsched, tmp_path / "a", "--bits", "4", "--opset", "17")
    _one_line_error(result, "w4a8 needs opset 21", "--opset 21")
    assert _leftovers(tmp_path) == []


def test_unknown_text_weights_are_refused(calibrated, tmp_path):
    model, qsched = calibrated(QUANT_FAMILY)
    result = _export(model, qsched, tmp_path / "a", "--bits", "32", "--text-weights", "int4")
    _one_line_error(result, "text weights must be one of float, int8, got 'int4'", "--text-weights int8")
    assert _leftovers(tmp_path) == []


def test_existing_output_needs_overwrite(calibrated, tmp_path):
    model, qsched = calibrated(QUANT_FAMILY)
    out = tmp_path / "a"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _one_line_error(_export(model, qsched, out), "already exists", "--overwrite")
    assert _leftovers(out) == ["keep.txt"]


def test_wrong_step_count_is_refused(calibrated, tmp_path):
    model, qsched = calibrated(QUANT_FAMILY)
    result = runner.invoke(app, ["export", "--model", str(model), "--coeffs", str(qsched), "--steps", "3", "--out", str(tmp_path / "a")])
    _one_line_error(result, f"calibrated for {STEPS} steps, not 3", f"--steps {STEPS}")
    assert _leftovers(tmp_path) == []


def test_uncalibrated_scheme_names_the_calibrated_ones(calibrated, tmp_path):
    model, qsched = calibrated("lcm")  # fp32 only
    result = runner.invoke(app, ["export", "--model", str(model), "--coeffs", str(qsched), "--steps", str(STEPS), "--bits", "8", "--out", str(tmp_path / "a")])
    _one_line_error(result, "scheme w8a8 is not calibrated", "it has: fp32")
    assert _leftovers(tmp_path) == []


def test_coefficients_of_another_model_are_refused(calibrated, tmp_path):
    model, _ = calibrated(QUANT_FAMILY)
    _, other = calibrated("euler_a")
    result = runner.invoke(app, ["export", "--model", str(model), "--coeffs", str(other), "--steps", str(STEPS), "--bits", "32", "--out", str(tmp_path / "a")])
    _one_line_error(result, "calibrated for another setting (sampler euler_a vs tcd)")
    assert _leftovers(tmp_path) == []


def test_interrupted_export_leaves_nothing(calibrated, tmp_path, monkeypatch):
    from qsched_export.export import onnx_io

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_io, "save_model", interrupt)
    model, qsched = calibrated(QUANT_FAMILY)
    result = _export(model, qsched, tmp_path / "a", "--bits", "32")
    assert result.exit_code == 130 and "Traceback" not in result.output, result.output  # 130: interrupted (cli/common.py)
    assert "interrupted by SIGINT" in " ".join(result.output.split())
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("kwargs,needle", [({"steps": 0}, "steps must be >= 1"), ({"batch": 0}, "batch must be >= 1"),
                                           ({"opset": 16}, "opset 16 is not supported"), ({"scheme": "w2a2"}, "unknown scheme"),
                                           ({"scheme": "w3a8"}, "w3a8 is a study-only simulation"), ({"scheme": "w8a6"}, "w8a6 is a study-only")])
def test_config_validation(tmp_path, kwargs, needle):
    from qsched_export.errors import QSchedError
    from qsched_export.export import ExportConfig

    with pytest.raises(QSchedError, match=needle):
        ExportConfig(out=tmp_path / "a", **kwargs)
