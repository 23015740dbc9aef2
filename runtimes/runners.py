"""One `Runner` interface over ONNX Runtime sessions and TensorRT engines: named numpy inputs in,
named numpy outputs out.

Execution providers are always explicit: a provider that is not available is an error naming
the ones that are, never a silent fall back to the CPU. `onnxruntime`, `tensorrt` and
cuda-python are imported only when a runner of that kind is opened.
"""

from __future__ import annotations

import abc
from pathlib import Path

import numpy as np

from runtimes.errors import RunnerError
from runtimes.int4 import ort_source

# Short names accepted on the command line -> ONNX Runtime execution provider names.
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
ENGINE_SUFFIX = ".engine"
_BUILD_ON_DEVICE = "rebuild the engine on this device: qsched-export build --from BUNDLE --target tensorrt"


class Runner(abc.ABC):
    """Runs one graph. `input_names`/`output_names` are the graph's, in its order."""

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    @property
    @abc.abstractmethod
    def description(self) -> str:
        """What runs the graph, e.g. `onnxruntime (CPUExecutionProvider)`, for reports."""

    @abc.abstractmethod
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on `feeds` (every input by name) and return every output by name."""

    def _check_feeds(self, feeds: dict[str, np.ndarray]) -> None:
        missing = [n for n in self.input_names if n not in feeds]
        unexpected = [n for n in feeds if n not in self.input_names]
        if missing or unexpected:
            raise RunnerError(f"{self.description}: inputs missing {missing or 'none'}, unexpected {unexpected or 'none'}",
                              f"feed exactly {', '.join(self.input_names)}")


def resolve_providers(names: list[str] | tuple[str, ...], available: list[str]) -> list[str]:
    """Map short or full provider names to ONNX Runtime's and require each to be available."""
    if not names:
        raise RunnerError("no execution provider given", f"choose from {', '.join(PROVIDERS)}")
    full = [PROVIDERS.get(n, n) for n in names]
    missing = [n for n in full if n not in available]
    if missing:
        raise RunnerError(f"execution provider {', '.join(missing)} is not available in this onnxruntime (available: {', '.join(available)})",
                          "install onnxruntime-gpu for cuda/tensorrt, or pass --provider cpu")
    return full


def ort_session_options():
    """The `onnxruntime.SessionOptions` every session of ours (running or optimizing a graph) takes.

    ONNX Runtime (1.32) fuses a per-channel int8 weight's DequantizeLinear feeding MatMul (the int8
    text-encoder weights; not w4a16's int4 blocks, measured) into MatMulNBits, and by default
    (accuracy level 4) that kernel quantizes the activations to int8 at run time. In our graphs
    that form means float activations, as TensorRT runs it and the PyTorch reference computes it:
    accuracy level 1 keeps them float32 (tiny FLUX text graph: 2e-2 -> 2e-6 max abs from it)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Errors only: ORT's warnings about unused initializers would drown the CLI's output.
    options.log_severity_level = 3
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    return options


class OrtRunner(Runner):
    """An ONNX Runtime session (`.onnx` or `.ort` file) on exactly the given execution providers."""

    def __init__(self, path: str | Path, providers: list[str] | tuple[str, ...] = ("cpu",)):
        import onnxruntime as ort

        self.path = Path(path)
        self.providers = resolve_providers(providers, ort.get_available_providers())
        options = ort_session_options()
        try:
            with ort_source(self.path) as source:  # w4a8s: int4 weights expanded once, layer by layer (runtimes/int4.py)
                self.session = ort.InferenceSession(source, sess_options=options, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own untyped Fail/InvalidGraph errors
            raise RunnerError(f"onnxruntime could not load {self.path.name}: {str(exc).strip().splitlines()[0]}",
                              "re-export the artifact, or upgrade onnxruntime") from None
        # onnxruntime-gpu lists CUDA as available even without a GPU, then falls back to the CPU
        # with only a log line: refuse that.
        dropped = [p for p in self.providers if p not in self.session.get_providers()]
        if dropped:
            raise RunnerError(f"onnxruntime could not start {', '.join(dropped)} for {self.path.name} (the session got {', '.join(self.session.get_providers())})",
                              "check the GPU driver and CUDA/cuDNN versions onnxruntime-gpu needs, or pass --provider cpu")
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())

    @property
    def description(self) -> str:
        return f"onnxruntime ({self.providers[0]})"

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._check_feeds(feeds)
        try:
            outputs = self.session.run(list(self.output_names), feeds)
        except Exception as exc:  # onnxruntime raises its own untyped InvalidArgument/Fail errors
            raise RunnerError(f"onnxruntime could not run {self.path.name}: {str(exc).strip().splitlines()[0]}",
                              "the manifest does not match its graphs (shapes, dtypes): re-export the artifact") from None
        return dict(zip(self.output_names, outputs))


def import_tensorrt():
    """The `tensorrt` module, or a `RunnerError` saying how to get it (the one import of TensorRT:
    the engine runner and the tensorrt target both call this)."""
    try:
        import tensorrt
    except ImportError:
        raise RunnerError("TensorRT is not installed on this machine (the tensorrt Python package is missing)",
                          "on Jetson it comes with JetPack (apt install nvidia-jetpack); on desktop: pip install tensorrt cuda-python "
                          "(NVIDIA's wheels, the project's tensorrt extra); without TensorRT here, run qsched-export bundle --target tensorrt "
                          "and build on the device") from None
    return tensorrt


def import_cudart():
    """cuda-python's runtime module: `cuda.bindings.runtime` (12.6+) or the older `cuda.cudart`."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise RunnerError("cuda-python is not installed (the TensorRT runner needs it for GPU memory)",
                              "pip install cuda-python, or use the onnxruntime target") from None
    return cudart


def cuda_call(cudart, result):
    """cuda-python returns `(error, *values)`; raise on an error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        name = cudart.cudaGetErrorName(err)[1]
        text = cudart.cudaGetErrorString(err)[1]
        raise RunnerError(f"CUDA error {_text(name)}: {_text(text)}", "check the GPU driver with nvidia-smi (or tegrastats on Jetson)")
    return values[0] if len(values) == 1 else values


def require_cuda_device(cudart) -> int:
    """Number of CUDA devices; a clear error when there is none or no usable driver."""
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or not count:
        reason = _text(cudart.cudaGetErrorString(err)[1]) if err != cudart.cudaError_t.cudaSuccess else "zero devices"
        raise RunnerError(f"no CUDA device for the TensorRT runner ({reason})",
                          "run on a machine with an NVIDIA GPU and driver, or use --provider cpu with the onnxruntime target")
    return int(count)


def check_engine_version(engine_path: Path, built_with: str | None, installed: str) -> None:
    """Engines run only on the TensorRT version that built them (without --versionCompatible)."""
    if built_with is not None and built_with != installed:
        raise RunnerError(f"{engine_path.name} was built by TensorRT {built_with}, but this is TensorRT {installed}", _BUILD_ON_DEVICE)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class TensorRTRunner(Runner):
    """A deserialized TensorRT 10 engine with static I/O shapes: one device buffer per I/O
    tensor, addressed by name (`set_tensor_address`), run with `execute_async_v3` on a stream."""

    def __init__(self, path: str | Path, built_with: str | None = None):
        self.path = Path(path)
        trt = import_tensorrt()
        check_engine_version(self.path, built_with, trt.__version__)
        self._cudart = cudart = import_cudart()
        require_cuda_device(cudart)
        logger = trt.Logger(trt.Logger.WARNING)
        self._engine = trt.Runtime(logger).deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise RunnerError(f"TensorRT {trt.__version__} could not deserialize {self.path.name} (engines are tied to the TensorRT version and GPU that built them)",
                              _BUILD_ON_DEVICE)
        self._context = self._engine.create_execution_context()
        self._stream = cuda_call(cudart, cudart.cudaStreamCreate())
        self._specs: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self._buffers: dict[str, int] = {}
        inputs, outputs = [], []
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            shape = tuple(self._engine.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RunnerError(f"{self.path.name}: tensor {name} has a dynamic shape {shape}", "export with static shapes")
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            self._specs[name] = (shape, dtype)
            self._buffers[name] = cuda_call(cudart, cudart.cudaMalloc(max(1, int(np.prod(shape)) * dtype.itemsize)))
            self._context.set_tensor_address(name, self._buffers[name])
            (inputs if self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(name)
        self.input_names, self.output_names = tuple(inputs), tuple(outputs)
        self._version = trt.__version__

    @property
    def description(self) -> str:
        return f"tensorrt {self._version}"

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._check_feeds(feeds)
        cudart = self._cudart
        for name in self.input_names:
            shape, dtype = self._specs[name]
            host = np.ascontiguousarray(feeds[name], dtype=dtype)
            if host.shape != shape:
                raise RunnerError(f"{self.path.name}: input {name} has shape {host.shape}, the engine takes {shape}", "feed the shapes in the manifest")
            cuda_call(cudart, cudart.cudaMemcpyAsync(self._buffers[name], host.ctypes.data, host.nbytes,
                                                     cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self._stream))
        if not self._context.execute_async_v3(self._stream):
            raise RunnerError(f"TensorRT failed to run {self.path.name}", "run with a verbose TensorRT logger to see why")
        results = {}
        for name in self.output_names:
            shape, dtype = self._specs[name]
            results[name] = np.empty(shape, dtype=dtype)
            cuda_call(cudart, cudart.cudaMemcpyAsync(results[name].ctypes.data, self._buffers[name], results[name].nbytes,
                                                     cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self._stream))
        cuda_call(cudart, cudart.cudaStreamSynchronize(self._stream))
        return results

    def __del__(self):
        cudart = getattr(self, "_cudart", None)
        if cudart is not None:
            for ptr in getattr(self, "_buffers", {}).values():
                cudart.cudaFree(ptr)


def open_runner(path: str | Path, providers: list[str] | tuple[str, ...] = ("cpu",), *, tensorrt_version: str | None = None) -> Runner:
    """A runner for a graph file: a `.engine` runs on TensorRT, `.onnx`/`.ort` on ONNX Runtime."""
    path = Path(path)
    if path.suffix == ENGINE_SUFFIX:
        return TensorRTRunner(path, built_with=tensorrt_version)
    return OrtRunner(path, providers)
