"""ONNX Runtime's CUDA and TensorRT execution providers, for GPUs without a TensorRT install.

Inputs and outputs stay on the device: they are CuPy arrays bound to the session with
IOBinding. ONNX Runtime runs on its own stream, so inputs are synchronized before each run;
runs of one session are serialized (the GPU would gain nothing from overlapping them).

With static shapes (--shapes static, or auto: from a shape's second call) the CUDA provider
also replays each call's exact shapes from a CUDA graph (CudaGraph): one graph at a time, the
latest shape to qualify, beside the session that runs every other shape.
"""

import collections
import logging
import math
import threading
from pathlib import Path

from ..errors import EngineError, require

log = logging.getLogger("fastimg")

PROVIDERS = {
    "cuda": ["CUDAExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
}


_dlls_loaded = False


def preload_cuda_libraries() -> None:
    """Load CUDA and cuDNN from the nvidia-* wheels (or torch's) before the first GPU session.

    onnxruntime-gpu does not find those wheels' libraries by itself on Linux: without this, a
    session asked for the CUDA provider silently runs on the CPU instead.
    """
    global _dlls_loaded
    import onnxruntime as ort

    if _dlls_loaded or not hasattr(ort, "preload_dlls"):  # preload_dlls: onnxruntime >= 1.21
        return
    _dlls_loaded = True
    try:
        ort.preload_dlls()
    except Exception:  # libraries on the loader's path are still found the usual way
        pass


def tensorrt_libraries_found() -> bool:
    """Whether TensorRT's libraries can be loaded here (ONNX Runtime's TensorRT provider is
    listed by every onnxruntime-gpu build, with or without them)."""
    import ctypes
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        return True  # its wheels load libnvinfer from tensorrt_libs when imported
    try:
        ctypes.CDLL("libnvinfer.so.10")
    except OSError:
        return False
    return True


def cuda_providers() -> list[str]:
    """The GPU execution providers this onnxruntime build offers."""
    import onnxruntime as ort

    wanted = {"CUDAExecutionProvider", "TensorrtExecutionProvider"}
    return [p for p in ort.get_available_providers() if p in wanted]


class OnnxRuntimeCudaSession:
    """An InferenceSession on the GPU whose run() takes and returns CuPy arrays."""

    device = "cuda"

    def __init__(
        self,
        path: Path,
        provider: str = "cuda",
        cache_dir: Path | None = None,
        device: int = 0,
        fp16: bool = True,
        shapes: str = "dynamic",
    ):
        import onnxruntime as ort

        self.cp = require("cupy", "gpu")
        missing = [p for p in PROVIDERS[provider] if p not in ort.get_available_providers()]
        if missing:
            raise EngineError(
                f"this onnxruntime has no {', '.join(missing)}: install onnxruntime-gpu "
                "(pip install 'fastimg[gpu]') in place of onnxruntime"
            )
        providers = []
        for name in PROVIDERS[provider]:
            options = {"device_id": device}
            if name == "TensorrtExecutionProvider":
                options.update(trt_fp16_enable=fp16, trt_engine_cache_enable=cache_dir is not None)
                if cache_dir is not None:
                    options["trt_engine_cache_path"] = str(cache_dir)
            providers.append((name, options))
        preload_cuda_libraries()
        try:
            self._session = ort.InferenceSession(str(path), providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise EngineError(f"ONNX Runtime cannot load {path} on the GPU: {exc}") from None
        landed = self._session.get_providers()
        if provider == "tensorrt" and "TensorrtExecutionProvider" not in landed:
            raise EngineError(
                f"ONNX Runtime could not start its TensorRT provider for {path} (TensorRT's "
                "libnvinfer.so.10 is not found): install TensorRT 10 (pip install "
                "'fastimg[tensorrt]'), or run --backend onnxruntime-cuda"
            )
        if "CUDAExecutionProvider" not in landed:
            raise EngineError(
                f"ONNX Runtime fell back to the CPU for {path}: its CUDAExecutionProvider "
                "could not load the CUDA libraries (CUDA 13 and cuDNN 9 for onnxruntime-gpu "
                ">= 1.24: pip install 'onnxruntime-gpu[cuda,cudnn]')"
            )
        self._types = {i.name: i.type for i in self._session.get_inputs()}
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]
        self.signature = {
            arg.name: (arg.type, len(arg.shape) if isinstance(arg.shape, list) else None)
            for arg in [*self._session.get_inputs(), *self._session.get_outputs()]
        }
        self.device_id = device
        self._lock = threading.Lock()
        self._path = Path(path)
        self.shapes = shapes if provider == "cuda" else "dynamic"  # (graphs: the CUDA provider's)
        self._seen: collections.Counter = collections.Counter()
        self._graph = None  # the CudaGraph of one shape key, once one qualified
        self._no_graph: set = set()  # shape keys whose graph could not be made

    def run(self, feeds: dict) -> dict:
        """Run on device arrays (NumPy inputs are copied up); outputs come back as CuPy."""
        with self._lock, self.cp.cuda.Device(self.device_id):
            if self.shapes == "dynamic":
                return self._run(feeds)
            key = tuple(sorted((name, tuple(array.shape)) for name, array in feeds.items()))
            if self._graph is not None and self._graph.key == key:
                return self._graph.run(feeds)
            outputs = self._run(feeds)
            if len(self._seen) > 1000:
                self._seen.clear()
            self._seen[key] += 1
            wanted = 1 if self.shapes == "static" else 2  # auto: a shape seen once stays dynamic
            if self._seen[key] >= wanted and key not in self._no_graph:
                self._graph = None  # the old graph's buffers go before the new one's
                self._graph = self._capture(key, feeds, outputs)
            return outputs

    def _capture(self, key: tuple, feeds: dict, outputs: dict):
        """The CudaGraph for the shapes of `feeds` (their `outputs` give its output shapes), or
        None, said once per shape, where ONNX Runtime cannot capture this graph."""
        try:
            return CudaGraph(self, key, feeds, outputs)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            self._no_graph.add(key)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.info("%s runs these shapes without a CUDA graph: %s", self._path, first[:300])
            return None

    def _run(self, feeds: dict) -> dict:
        cp = self.cp
        binding = self._session.io_binding()
        keep = []
        for name in self.input_names:
            dtype = "int64" if self._types[name] == "tensor(int64)" else "float32"
            array = cp.ascontiguousarray(cp.asarray(feeds[name], dtype=dtype))
            keep.append(array)
            binding.bind_input(
                name, "cuda", self.device_id, array.dtype, array.shape, array.data.ptr
            )
        for name in self.output_names:
            binding.bind_output(name, "cuda", self.device_id)
        cp.cuda.get_current_stream().synchronize()  # ONNX Runtime reads on its own stream
        self._session.run_with_iobinding(binding)
        outputs = {}
        for name, value in zip(self.output_names, binding.get_outputs(), strict=True):
            shape = tuple(value.shape())  # every fastimg engine output is float32
            outputs[name] = device_view(cp, value, shape, cp.float32).copy()
        return outputs


class CudaGraph:
    """One graph at one set of input shapes on ONNX Runtime's CUDA graphs: a session of its own
    whose free dimensions (batch, latent_height, ...) are fixed to those shapes, so that its
    shape computations fold away and every node runs on the GPU, as capture needs; its inputs
    and outputs are bound to device buffers that stay put. Its first run captures the graph
    (after one run to set up its memory, as ONNX Runtime does), the next ones replay it, each
    after its inputs are copied into the bound buffers."""

    def __init__(self, owner: "OnnxRuntimeCudaSession", key: tuple, feeds: dict, outputs: dict):
        import numpy as np
        import onnxruntime as ort

        self.key, self.cp, device = key, owner.cp, owner.device_id
        options = ort.SessionOptions()
        for name, value in free_dimensions(owner._session.get_inputs(), feeds).items():
            options.add_free_dimension_override_by_name(name, value)
        provider = ("CUDAExecutionProvider", {"device_id": device, "enable_cuda_graph": "1"})
        self._session = ort.InferenceSession(str(owner._path), options, providers=[provider])
        self.input_names, self.output_names = list(owner.input_names), list(owner.output_names)
        self._binding = self._session.io_binding()
        self._buffers, self._values = {}, {}
        shapes = {**{n: tuple(feeds[n].shape) for n in self.input_names},
                  **{n: tuple(outputs[n].shape) for n in self.output_names}}  # fmt: skip
        for name, shape in shapes.items():
            dtype = np.int64 if owner._types.get(name) == "tensor(int64)" else np.float32
            value = ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, "cuda", device)
            self._values[name] = value  # (the buffer's owner)
            self._buffers[name] = device_view(self.cp, value, shape, dtype)
            if name in self.input_names:
                self._binding.bind_ortvalue_input(name, value)
            else:
                self._binding.bind_ortvalue_output(name, value)
        self.run(feeds)  # ONNX Runtime's warm-up run, then the capture:
        self.run(feeds)  # a graph that cannot be captured fails here, not in a later call

    def run(self, feeds: dict) -> dict:
        """Copy `feeds` into the bound inputs, replay the graph, return copies of the outputs."""
        cp = self.cp
        for name in self.input_names:
            self._buffers[name][...] = cp.asarray(feeds[name], dtype=self._buffers[name].dtype)
        cp.cuda.get_current_stream().synchronize()  # ONNX Runtime reads on its own stream
        self._session.run_with_iobinding(self._binding)
        return {name: self._buffers[name].copy() for name in self.output_names}


def free_dimensions(inputs, feeds: dict) -> dict[str, int]:
    """Each named free dimension of a graph's `inputs` (onnxruntime NodeArgs) and its size in
    `feeds`; raises ValueError where `feeds` give one name two sizes or a dimension has none."""
    sizes: dict[str, int] = {}
    for arg in inputs:
        shape = feeds[arg.name].shape
        for dim, size in zip(arg.shape, shape, strict=True):
            if isinstance(dim, int):
                continue
            if not dim:
                raise ValueError(f"input {arg.name} has an unnamed free dimension")
            if sizes.setdefault(dim, int(size)) != int(size):
                raise ValueError(f"dimension {dim} is {sizes[dim]} and {size} in one call")
    return sizes


def device_view(cp, value, shape: tuple, dtype):
    """A CuPy array over the device memory of the onnxruntime OrtValue `value` (kept alive as
    the memory's owner while the array lives)."""
    size = math.prod(shape) * cp.dtype(dtype).itemsize
    memory = cp.cuda.UnownedMemory(value.data_ptr(), size, value)
    return cp.ndarray(shape, dtype, cp.cuda.MemoryPointer(memory, 0))


def load_cuda_session(path: Path, options) -> OnnxRuntimeCudaSession:
    """The registry's loader for onnxruntime-cuda (static shapes: CUDA graphs)."""
    return OnnxRuntimeCudaSession(
        path, provider="cuda", device=options.device or 0, shapes=options.shapes
    )


def load_tensorrt_session(path: Path, options) -> OnnxRuntimeCudaSession:
    """The registry's loader for onnxruntime-tensorrt: engines cached in `cache_dir`."""
    return OnnxRuntimeCudaSession(
        path,
        provider="tensorrt",
        cache_dir=options.cache_dir,
        device=options.device or 0,
        fp16=options.fp16,
    )
