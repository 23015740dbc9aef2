"""onnx_io: external data past the 2 GB limit, INT4 packing, default opsets."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_models import make_model


def _matmul_model(weight: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, weight.shape[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, weight.shape[1]])], [numpy_helper.from_array(weight, "w")])
    return make_model(graph, 21)


def test_large_models_use_one_external_data_file(tmp_path, monkeypatch):
    from qsched_export.export import onnx_io

    monkeypatch.setattr(onnx_io, "TWO_GB", 1024)  # pretend 4 KiB of weights is over the limit
    monkeypatch.setattr(onnx_io, "GRAPH_ROOM", 0)
    weight = np.arange(32 * 32, dtype=np.float32).reshape(32, 32) / 1000
    path = tmp_path / "denoise.onnx"
    onnx_io.save_model(_matmul_model(weight), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["denoise.onnx", "denoise.onnx.data"]
    assert path.stat().st_size < 1024
    onnx_io.check_model(path)
    assert onnx_io.io_specs(path) == ({"x": ((2, 32), "float32")}, {"y": ((2, 32), "float32")})
    x = np.ones((2, 32), np.float32)
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, x @ weight, rtol=1e-6)


def test_int4_packing_round_trips_and_runs(tmp_path):
    from qsched_export.export.onnx_io import pack_int4_weights

    values = np.array([[-8, 7, 1, -1], [3, 0, -5, 2], [6, -7, 4, -3], [0, 1, 2, 3]], np.int8)  # [K=4, N=4]
    scale = np.array([[0.5, 1.0, 2.0, 0.25], [1.0, 1.0, 1.0, 1.0]], np.float32)  # blocks of 2 along K
    graph = helper.make_graph([helper.make_node("DequantizeLinear", ["w", "s"], ["y"], axis=0, block_size=2)], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])],
                              [numpy_helper.from_array(values, "w"), numpy_helper.from_array(scale, "s")])
    model = make_model(graph, 21)
    assert pack_int4_weights(model) == 1
    weight = model.graph.initializer[0]
    assert weight.data_type == TensorProto.INT4 and len(weight.raw_data) == 8
    np.testing.assert_array_equal(numpy_helper.to_array(weight), values)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, tmp_path / "w.onnx")
    y = ort.InferenceSession(str(tmp_path / "w.onnx"), providers=["CPUExecutionProvider"]).run(None, {})[0]
    np.testing.assert_array_equal(y, values * np.repeat(scale, 2, axis=0))


def test_default_opsets():
    from qsched_export.export.onnx_io import default_opset
    from qsched_export.quant import SCHEMES

    # w4a16 has static int8 activations (its Conv) but needs 21 for its INT4 blocks.
    assert {name: default_opset(s) for name, s in SCHEMES.items() if s.exportable} == {
        "fp32": 21, "fp16": 21, "w8a8": 20, "w4a8": 21, "w4a8s": 20, "w8a16": 21, "w4a16": 21}


def test_ir_lint_skip_is_scoped_and_changes_no_byte(tmp_path, monkeypatch):
    """The export skips the TorchScript IR lint only inside the call, only on the measured torch
    releases, never with QSCHED_EXPORT_JIT_LINT=1; with and without it the ONNX is byte-identical."""
    import torch

    from qsched_export.export import onnx_io
    from qsched_export.export.qdq import swap_for_export
    from qsched_export.quant import get_scheme, observe_ranges, quantize_model

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(8, 4, 1))
    x = torch.randn(1, 4, 6, 6)
    quantize_model(net, get_scheme("w8a8"))
    with observe_ranges(net), torch.no_grad():
        net(x)
    swap_for_export(net, "qdq")
    original = torch._C._jit_pass_lint
    calls = []
    monkeypatch.setattr(torch._C, "_jit_pass_lint", lambda graph: calls.append(1) or original(graph))
    monkeypatch.setenv(onnx_io.LINT_ENV, "1")
    linted = onnx_io.export_module(net, (x,), tmp_path / "a.onnx", ["x"], ["y"], 20)
    assert calls, "with QSCHED_EXPORT_JIT_LINT=1 the exporter lints"
    monkeypatch.delenv(onnx_io.LINT_ENV)
    calls.clear()
    before = torch._C._jit_pass_lint
    skipped = onnx_io.export_module(net, (x,), tmp_path / "b.onnx", ["x"], ["y"], 20)
    assert (not calls) is onnx_io.lint_skipped()  # torch 2.4-2.14: skipped
    assert torch._C._jit_pass_lint is before  # restored after the call
    assert linted.SerializeToString() == skipped.SerializeToString()
    # Outside the range where skipping was measured, the exporter lints as torch does.
    monkeypatch.setattr(onnx_io, "LINT_SKIP_TORCH", ((1, 0), (1, 13)))
    assert not onnx_io.lint_skipped()


def test_hand_built_models_carry_the_exporters_ir_version():
    """Every ONNX model a test builds by hand goes through tests/onnx_models.make_model: IR version
    10, as the exporter writes, not the onnx package's default (14 with onnx 1.23), which an older
    ONNX Runtime refuses to load. Coverage guard: no test calls onnx.helper.make_model itself."""
    import onnx_models

    tests = Path(__file__).parents[1]
    direct = re.compile(r"helper\.make_model\(|from onnx\.helper import [^\n]*\bmake_model\b")
    callers = sorted(str(p.relative_to(tests)) for p in tests.rglob("*.py")
                     if p.name != "onnx_models.py" and direct.search(p.read_text(encoding="utf-8")))
    assert not callers, f"build test models with onnx_models.make_model, not onnx.helper.make_model: {', '.join(callers)}"
    weight = np.ones((4, 4), np.float32)
    assert _matmul_model(weight).ir_version == onnx_models.IR_VERSION == 10
    model = onnx_models.make_model(_matmul_model(weight).graph, 17, ms_domain=True)
    assert model.ir_version == 10 and {(o.domain, o.version) for o in model.opset_import} == {("", 17), ("com.microsoft", 1)}
    with pytest.raises(ValueError, match="opset 23 needs IR version 11"):
        onnx_models.make_model(model.graph, 23)


def test_onnx_io_names_no_undefined_types():
    """ruff's undefined-name check (F821) on the exporter: a string annotation that names a module
    the file never imports (onnx_io's `onnx.ModelProto`) breaks `typing.get_type_hints` and tools."""
    pytest.importorskip("ruff", reason="pip install ruff (in the dev extra) to lint the exporter")
    package = Path(__file__).parents[2] / "qsched_export"
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--isolated", "--select", "F821", "--output-format", "concise", str(package)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
