"""Engine backends behind one small interface: load a component, run it on named arrays."""

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..errors import InputError

if TYPE_CHECKING:
    import numpy as np

BACKENDS = ("tensorrt", "onnxruntime-cuda", "openvino", "onnxruntime", "onnxruntime-tensorrt")
GPU_BACKENDS = ("tensorrt", "onnxruntime-cuda", "onnxruntime-tensorrt")
# ONNX Runtime's TensorRT provider compiles engines on first use (minutes): asked for, never auto.
AUTO_ORDER = ("tensorrt", "onnxruntime-cuda", "openvino", "onnxruntime")
PRECISIONS = ("fp32", "bf16", "fp16")


class Session(Protocol):
    """One loaded engine: run(feeds) maps input names to arrays and returns named outputs."""

    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: "dict[str, np.ndarray]") -> "dict[str, np.ndarray]":
        """Run the engine on `feeds` and return every output by name."""
        ...


def load_session(
    backend: str,
    path: Path,
    threads: int | None = None,
    precision: str = "fp32",
    cache_dir: Path | None = None,
) -> Session:
    """Load the model file at `path` with the named (already resolved) backend."""
    if backend == "onnxruntime":
        from .onnxruntime import OnnxRuntimeSession

        return OnnxRuntimeSession(path, threads=threads)
    if backend == "openvino":
        from .openvino import OpenVinoSession

        return OpenVinoSession(path, threads=threads, precision=precision, cache_dir=cache_dir)
    if backend in ("onnxruntime-cuda", "onnxruntime-tensorrt"):
        from .onnxruntime_gpu import OnnxRuntimeCudaSession

        provider = backend.removeprefix("onnxruntime-")
        return OnnxRuntimeCudaSession(path, provider=provider, cache_dir=cache_dir)
    raise InputError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")


def load_sessions(backend: str, manifest, components, **options) -> dict:
    """One session per component of an engine folder, on a resolved backend."""
    if backend == "tensorrt":
        from ..gpu import compute_capability
        from .tensorrt import TensorRTEngines
        from .tensorrt_plans import find_plans

        trt_version = __import__("tensorrt").__version__
        engines = TensorRTEngines(find_plans(manifest, trt_version, compute_capability()))
        return {name: engines.session(name) for name in components}
    return {
        name: load_session(backend, manifest.path(name, backend), **options) for name in components
    }
