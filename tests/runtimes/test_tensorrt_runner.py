"""TensorRTRunner branches that need no GPU. Fake `tensorrt`/cudart modules stand in only to
reach our own checks (version, CUDA device); no engine is ever deserialized or run here."""

from __future__ import annotations

import enum
import importlib.util
import sys
import types

import pytest

from runtimes.errors import RunnerError
from runtimes.runners import TensorRTRunner, check_engine_version, cuda_call, open_runner, require_cuda_device


class _Err(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorNoDevice = 100


def fake_cudart(count_result):
    mod = types.SimpleNamespace(cudaError_t=_Err)
    mod.cudaGetDeviceCount = lambda: count_result
    mod.cudaGetErrorString = lambda e: (_Err.cudaSuccess, b"no CUDA-capable device is detected")
    mod.cudaGetErrorName = lambda e: (_Err.cudaSuccess, e.name.encode())
    return mod


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tests the missing-TensorRT branch; tensorrt is installed")
def test_missing_tensorrt_is_a_runner_error(tmp_path):
    with pytest.raises(RunnerError) as info:
        open_runner(tmp_path / "denoise.engine")
    assert "TensorRT is not installed on this machine" in info.value.problem and "JetPack" in info.value.fix


def test_engine_from_another_tensorrt_version(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0.30"))
    with pytest.raises(RunnerError) as info:
        TensorRTRunner(tmp_path / "denoise.engine", built_with="10.7.0.23")
    assert info.value.problem == "denoise.engine was built by TensorRT 10.7.0.23, but this is TensorRT 10.3.0.30"
    assert "build --from BUNDLE --target tensorrt" in info.value.fix
    check_engine_version(tmp_path / "x.engine", "10.3.0.30", "10.3.0.30")  # same version: no error
    check_engine_version(tmp_path / "x.engine", None, "10.3.0.30")  # unknown builder: TensorRT itself decides


def test_no_cuda_device_with_fake_cudart():
    with pytest.raises(RunnerError, match=r"no CUDA device for the TensorRT runner \(zero devices\)"):
        require_cuda_device(fake_cudart((_Err.cudaSuccess, 0)))
    with pytest.raises(RunnerError, match="no CUDA-capable device is detected"):
        require_cuda_device(fake_cudart((_Err.cudaErrorNoDevice, None)))
    assert require_cuda_device(fake_cudart((_Err.cudaSuccess, 2))) == 2


def test_cuda_errors_are_named():
    cudart = fake_cudart(None)
    assert cuda_call(cudart, (_Err.cudaSuccess, 1234)) == 1234
    with pytest.raises(RunnerError, match="CUDA error cudaErrorNoDevice: no CUDA-capable device"):
        cuda_call(cudart, (_Err.cudaErrorNoDevice,))


@pytest.mark.skipif(importlib.util.find_spec("cuda") is None or importlib.util.find_spec("cuda.bindings") is None,
                    reason="cuda-python (cuda.bindings) is not installed")
def test_no_cuda_device_with_real_cudart():
    import subprocess

    if subprocess.run(["sh", "-c", "command -v nvidia-smi"], capture_output=True).returncode == 0:
        pytest.skip("this machine has an NVIDIA driver: the no-device branch cannot be reached")
    from cuda.bindings import runtime as cudart

    with pytest.raises(RunnerError, match="no CUDA device for the TensorRT runner"):
        require_cuda_device(cudart)
