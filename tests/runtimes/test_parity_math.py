"""Parity statistics on arrays with known answers, thresholds (fixed and derived from the
quantization noise), missing references, broken golden files, and the report."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from runtimes.errors import UserError
from runtimes.manifest import ArtifactError
from runtimes.parity import (
    NOISE_FACTOR, THRESHOLDS, ParityError, ParityReport, Threshold, compare, compare_outputs, load_golden, quantization_noise, write_report,
)


def test_known_values():
    ref = np.array([1.0, 0.0, 0.0, 0.0], np.float32)
    out = np.array([1.0, 1.0, 0.0, 0.0], np.float32)
    s = compare(out, ref)
    assert s.max_abs == 1.0 and s.mean_abs == 0.25 and s.rel_err == 1.0
    assert s.cosine == pytest.approx(1 / math.sqrt(2), abs=1e-15)
    assert s.psnr_db == pytest.approx(10 * math.log10(1 / 0.25), abs=1e-12)  # peak 1, mse 1/4: 6.0206 dB
    assert s.p99_abs == pytest.approx(np.percentile([0, 1, 0, 0], 99))


def test_image_peak_and_identical_arrays():
    ref = np.full((1, 3, 2, 2), 0.5, np.float32)
    s = compare(ref + 0.01, ref, peak=1.0)
    assert s.psnr_db == pytest.approx(40.0, abs=1e-4) and s.cosine == pytest.approx(1.0) and s.rel_err == pytest.approx(0.02, rel=1e-5)
    same = compare(ref, ref)
    assert same.psnr_db == math.inf and same.max_abs == 0 and same.cosine == 1.0 and same.rel_err == 0.0
    assert compare(np.zeros(3), np.zeros(3)).cosine == 1.0


def test_threshold_failures_are_named():
    s = compare(np.array([1.0, 1.0]), np.array([1.0, -1.0]))  # cosine 0
    failures = Threshold(max_abs=1.0, min_cosine=0.999, min_psnr_db=30, max_rel_err=0.02, quant_noise=0.01).failures(s)
    assert len(failures) == 4 and failures[0].startswith("max_abs 2") and failures[1].startswith("rel_err 1.41 > 0.02 (141.4x the quantization noise 0.01; at most 2x)")
    assert failures[2].startswith("cosine 0.000000 < 0.999")


def _golden(noise: float, shape=(1, 4, 8, 8), seed=0) -> dict[str, np.ndarray]:
    """fakequant/* references and fp32/* ones `noise` away from them (relative L2), for all outputs."""
    rng = np.random.default_rng(seed)
    golden = {}
    for output in ("first_latents", "final_latents", "image"):
        fq = rng.uniform(0.2, 0.8, (1, 3, 8, 8)) if output == "image" else rng.standard_normal(shape)
        d = rng.standard_normal(fq.shape)
        golden[f"fakequant/{output}"] = fq.astype(np.float32)
        golden[f"fp32/{output}"] = (fq + d * noise * np.linalg.norm(fq) / np.linalg.norm(d)).astype(np.float32)
    return golden


def _runtime(golden, output, rel: float, seed=1, around="fakequant") -> np.ndarray:
    ref = golden[f"{around}/{output}"].astype(np.float64)
    d = np.random.default_rng(seed).standard_normal(ref.shape)
    return (ref + d * rel * np.linalg.norm(ref) / np.linalg.norm(d)).astype(np.float32)


def test_step1_gate_is_in_units_of_the_quantization_noise():
    """A runtime that re-rounds (independent noise of the same size as quantization's) passes on
    any CPU; one that moves the latent by several noises (wrong coefficients: 10.7x on the
    sample) fails against both references."""
    golden = _golden(noise=0.01)
    assert quantization_noise(golden, "first_latents") == pytest.approx(0.01, rel=1e-3)
    rerounded = {"first_latents": _runtime(golden, "first_latents", 0.012), "final_latents": golden["fakequant/final_latents"],
                 "image": golden["fakequant/image"]}
    comparisons = compare_outputs(rerounded, golden, "qdq")
    assert all(c.passed for c in comparisons), [c.failures for c in comparisons]
    first = [c for c in comparisons if c.output == "first_latents"]
    assert {c.reference for c in first} == {"fp32", "fakequant"}
    assert all(c.threshold.max_rel_err == pytest.approx(NOISE_FACTOR * 0.01, rel=1e-3) for c in first)

    wrong = dict(rerounded, first_latents=_runtime(golden, "first_latents", 0.1))  # ~10x the noise
    failed = [c for c in compare_outputs(wrong, golden, "qdq") if not c.passed]
    assert [(c.output, c.reference) for c in failed] == [("first_latents", "fp32"), ("first_latents", "fakequant")]
    assert "the quantization noise" in failed[1].failures[0]


def test_every_failure_collected_then_raised_once(tmp_path):
    golden = _golden(noise=0.01)
    outputs = {"first_latents": -golden["fakequant/first_latents"], "final_latents": -golden["fakequant/final_latents"],
               "image": golden["fakequant/image"]}
    comparisons = compare_outputs(outputs, golden, "qdq")
    assert [(c.output, c.reference, c.passed) for c in comparisons] == [
        ("first_latents", "fp32", False), ("final_latents", "fp32", False), ("image", "fp32", True),
        ("first_latents", "fakequant", False), ("final_latents", "fakequant", False), ("image", "fakequant", True)]
    report = ParityReport("onnxruntime (CPUExecutionProvider)", "qdq", "w8a8", tuple(comparisons))
    assert report.summary == "FAILED | onnxruntime (CPUExecutionProvider)"
    err = ParityError(report)
    assert isinstance(err, UserError) and err.problem.count("final_latents vs") == 2 and err.fix.startswith("see parity.json")
    write_report(tmp_path / "parity.json", report)
    data = json.loads((tmp_path / "parity.json").read_text())
    assert data["passed"] is False and data["comparisons"][0]["threshold"]["quant_noise"] == pytest.approx(0.01, rel=1e-3)


def test_missing_references_are_errors_not_skipped_checks():
    golden = _golden(noise=0.01)
    outputs = {"first_latents": golden["fakequant/first_latents"], "final_latents": golden["fakequant/final_latents"], "image": golden["fakequant/image"]}
    for key in ("fakequant/first_latents", "fp32/first_latents", "fakequant/image"):
        with pytest.raises(ArtifactError, match=f"lacks the reference.*{key}"):
            compare_outputs(outputs, {k: v for k, v in golden.items() if k != key}, "qdq")
    # An fp32 artifact needs only the fp32 references; a quantized one both, for the step-1 gate.
    fp32_only = {k: v for k, v in golden.items() if k.startswith("fp32/")}
    compared = compare_outputs({k: fp32_only[f"fp32/{k}"] for k in outputs}, fp32_only, "fp32")
    assert sorted((c.output, c.reference) for c in compared) == sorted((k, "fp32") for k in outputs)
    with pytest.raises(ArtifactError, match="no parity thresholds for target form 'int2'"):
        compare_outputs(outputs, golden, "int2")


def test_broken_golden_and_unwritable_report_are_one_line_errors(tmp_path):
    bad = tmp_path / "golden.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ArtifactError, match="is not a valid .npz") as info:
        load_golden(bad)
    assert "\n" not in str(info.value)
    folder = tmp_path / "ro"
    folder.mkdir()
    golden = _golden(noise=0.01)
    report = ParityReport("onnxruntime (CPUExecutionProvider)", "qdq", "w8a8",
                          tuple(compare_outputs({"image": golden["fakequant/image"]}, golden, "qdq")))
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as a user who can write into read-only folders (root)")
        with pytest.raises(UserError, match="cannot write .*parity.json") as info:
            write_report(folder / "parity.json", report)
        assert "\n" not in str(info.value)
    finally:
        folder.chmod(0o700)


def test_unwritable_report_path_under_a_file(tmp_path):
    """Also as root: a parity.json path under a regular file cannot be written."""
    (tmp_path / "file").write_text("x")
    golden = _golden(noise=0.01)
    report = ParityReport("r", "qdq", "w8a8", tuple(compare_outputs({"image": golden["fakequant/image"]}, golden, "qdq")))
    with pytest.raises(UserError, match="cannot write"):
        write_report(tmp_path / "file" / "parity.json", report)


def test_fixed_thresholds():
    assert THRESHOLDS[("fp32", "fp32")]["final_latents"].max_abs == THRESHOLDS[("fp32", "fp32")]["first_latents"].max_abs == 1e-4
    for form in ("qdq", "matmulnbits", "fp16"):
        # Quantized graphs: the step-1 latent gets the derived bound; the final latent and image
        # only gross limits (the later steps amplify re-rounding).
        assert THRESHOLDS[(form, "fakequant")]["first_latents"] == Threshold()
        assert THRESHOLDS[(form, "fakequant")]["final_latents"].min_cosine < 1
