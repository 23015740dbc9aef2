"""Parity statistics on arrays with known answers, thresholds and the report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from runtimes.parity import THRESHOLDS, ParityError, ParityReport, Threshold, compare, compare_outputs, write_report


def test_known_values():
    ref = np.array([1.0, 0.0, 0.0, 0.0], np.float32)
    out = np.array([1.0, 1.0, 0.0, 0.0], np.float32)
    s = compare(out, ref)
    assert s.max_abs == 1.0 and s.mean_abs == 0.25
    assert s.cosine == pytest.approx(1 / math.sqrt(2), abs=1e-15)
    assert s.psnr_db == pytest.approx(10 * math.log10(1 / 0.25), abs=1e-12)  # peak 1, mse 1/4: 6.0206 dB
    assert s.p99_abs == pytest.approx(np.percentile([0, 1, 0, 0], 99))


def test_image_peak_and_identical_arrays():
    ref = np.full((1, 3, 2, 2), 0.5, np.float32)
    s = compare(ref + 0.01, ref, peak=1.0)
    assert s.psnr_db == pytest.approx(40.0, abs=1e-4) and s.cosine == pytest.approx(1.0)
    same = compare(ref, ref)
    assert same.psnr_db == math.inf and same.max_abs == 0 and same.cosine == 1.0
    assert compare(np.zeros(3), np.zeros(3)).cosine == 1.0


def test_threshold_failures_are_named():
    s = compare(np.array([1.0, 1.0]), np.array([1.0, -1.0]))  # cosine 0
    failures = Threshold(max_abs=1.0, min_cosine=0.999, min_psnr_db=30).failures(s)
    assert len(failures) == 3 and failures[0].startswith("max_abs 2") and failures[1].startswith("cosine 0.000000 < 0.999")


def test_every_failure_collected_then_raised_once(tmp_path):
    golden = {f"{r}/{o}": np.ones((1, 3, 4, 4), np.float32) for r in ("fp32", "fakequant") for o in ("final_latents", "image")}
    outputs = {"final_latents": -np.ones((1, 3, 4, 4), np.float32), "image": np.ones((1, 3, 4, 4), np.float32)}
    comparisons = compare_outputs(outputs, golden, "qdq")
    assert [(c.output, c.reference, c.passed) for c in comparisons] == [
        ("final_latents", "fp32", False), ("image", "fp32", True), ("final_latents", "fakequant", False), ("image", "fakequant", True)]
    report = ParityReport("onnxruntime (CPUExecutionProvider)", "qdq", "w8a8", tuple(comparisons))
    assert report.summary == "FAILED | onnxruntime (CPUExecutionProvider)"
    err = ParityError(report)
    assert err.problem.count("final_latents vs") == 2
    write_report(tmp_path / "parity.json", report)
    data = json.loads((tmp_path / "parity.json").read_text())
    assert data["passed"] is False and data["comparisons"][1]["psnr_db"] == "inf"


def test_thresholds_are_tight_where_the_graph_computes_the_reference():
    assert THRESHOLDS[("fp32", "fp32")]["final_latents"].max_abs == THRESHOLDS[("fp32", "fp32")]["first_latents"].max_abs == 1e-4
    for form in ("qdq", "matmulnbits"):
        # Quantized graphs: tight after one step, where only that call's rounding differs; loose on the
        # final latent, where the later steps can amplify one rounding flip (see runtimes/parity.py).
        vs_fakequant, vs_fp32 = THRESHOLDS[(form, "fakequant")], THRESHOLDS[(form, "fp32")]
        assert vs_fakequant["first_latents"].min_cosine >= 0.9995 > vs_fakequant["final_latents"].min_cosine
        assert vs_fp32["first_latents"].min_cosine < vs_fakequant["first_latents"].min_cosine
