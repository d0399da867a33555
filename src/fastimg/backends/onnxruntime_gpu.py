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
                options.update(trt_fp16_enable=True, trt_engine_cache_enable=cache_dir is not None)
                if cache_dir is not None:
                    options["trt_engine_cache_path"] = str(cache_dir)
            providers.append((name, options))
        try:
            self._session = ort.InferenceSession(str(path), providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise EngineError(f"ONNX Runtime cannot load {path} on the GPU: {exc}") from None
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
