"""ONNX Runtime's CUDA and TensorRT execution providers, for GPUs without a TensorRT install.

Inputs and outputs stay on the device: they are CuPy arrays bound to the session with
IOBinding. ONNX Runtime runs on its own stream, so inputs are synchronized before each run;
runs of one session are serialized (the GPU would gain nothing from overlapping them).
"""

import math
import threading
from pathlib import Path

from ..errors import EngineError, require

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

    def run(self, feeds: dict) -> dict:
        """Run on device arrays (NumPy inputs are copied up); outputs come back as CuPy."""
        with self._lock, self.cp.cuda.Device(self.device_id):
            return self._run(feeds)

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
            memory = cp.cuda.UnownedMemory(value.data_ptr(), math.prod(shape) * 4, value)
            outputs[name] = cp.ndarray(shape, cp.float32, cp.cuda.MemoryPointer(memory, 0)).copy()
        return outputs


def load_cuda_session(path: Path, options) -> OnnxRuntimeCudaSession:
    """The registry's loader for onnxruntime-cuda."""
    return OnnxRuntimeCudaSession(path, provider="cuda", device=options.device or 0)


def load_tensorrt_session(path: Path, options) -> OnnxRuntimeCudaSession:
    """The registry's loader for onnxruntime-tensorrt: engines cached in `cache_dir`."""
    return OnnxRuntimeCudaSession(
        path,
        provider="tensorrt",
        cache_dir=options.cache_dir,
        device=options.device or 0,
        fp16=options.fp16,
    )
