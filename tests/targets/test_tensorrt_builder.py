"""Our TensorRT builder wiring, with a recording stand-in for the `tensorrt` module: the flags and
limits we set, and the failure branches (parse errors, a build that returns None). No engine is
ever produced here: the stand-in's builder always fails to build."""

from __future__ import annotations

import types

import pytest

from qsched_export.errors import QSchedError
from qsched_export.targets.options import BuildOptions
from qsched_export.targets.tensorrt import build_engine


def fake_trt(parse_errors: list[str]):
    calls: dict = {}

    class Config:
        def set_memory_pool_limit(self, pool, size):
            calls["workspace"] = (pool, size)

        def create_timing_cache(self, blob):
            calls.setdefault("caches", []).append(blob)
            return blob

        def set_timing_cache(self, cache, ignore_mismatch):
            return cache != b"stale"  # a cache from another device is refused

    class Network:
        pass

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls["network_flags"] = flags
            return Network()

        def create_builder_config(self):
            calls["config"] = Config()
            return calls["config"]

        def build_serialized_network(self, network, config):
            calls["level"] = config.builder_optimization_level
            return None

    class Parser:
        num_errors = len(parse_errors)

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            calls["parsed"] = path
            return not parse_errors

        def get_error(self, i):
            return parse_errors[i]

    trt = types.SimpleNamespace(
        __version__="10.3.0.30", Logger=type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None}), Builder=Builder,
        OnnxParser=Parser, NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=5),
        MemoryPoolType=types.SimpleNamespace(WORKSPACE="workspace"))
    return trt, calls


def test_parse_errors_are_all_named(tmp_path):
    trt, calls = fake_trt(["node a: unsupported", "node b: bad scale"])
    with pytest.raises(QSchedError) as info:
        build_engine(trt, tmp_path / "denoise.onnx", BuildOptions("tensorrt", tmp_path / "o"), b"")
    assert "could not parse denoise.onnx: node a: unsupported; node b: bad scale" in info.value.problem
    assert calls["network_flags"] == 1 << 5  # strongly typed


def test_builder_settings_and_failed_build(tmp_path):
    trt, calls = fake_trt([])
    options = BuildOptions("tensorrt", tmp_path / "o", workspace_mib=1536, builder_optimization_level=4)
    with pytest.raises(QSchedError, match="failed to build denoise.onnx"):
        build_engine(trt, tmp_path / "denoise.onnx", options, b"stale")
    assert calls["workspace"] == ("workspace", 1536 << 20) and calls["level"] == 4
    assert calls["caches"] == [b"stale", b""]  # the refused cache is replaced by a fresh one
