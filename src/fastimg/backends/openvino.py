"""OpenVINO on the CPU: reads the exported ONNX, compiles once, caches the compiled model."""

from pathlib import Path

import numpy as np

from ..errors import EngineError, require
from .onnxruntime import available_cores

OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}


class OpenVinoSession:
    """A compiled OpenVINO model and one reusable infer request."""

    def __init__(
        self,
        path: Path,
        threads: int | None = None,
        precision: str = "fp32",
        cache_dir: Path | None = None,
    ):
        ov = require("openvino", "openvino")
        config = {
            "INFERENCE_PRECISION_HINT": OV_PRECISION[precision],
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": threads or available_cores(),
        }
        if cache_dir is not None:
            config["CACHE_DIR"] = str(cache_dir)
        try:
            compiled = ov.Core().compile_model(str(path), "CPU", config)
        except Exception as exc:  # OpenVINO raises untyped RuntimeErrors
            raise EngineError(
                f"OpenVINO cannot load {path}: {exc}. Re-export the engine folder, "
                "or run with --backend onnxruntime"
            ) from None
        self._request = compiled.create_infer_request()
        self.input_names = [port.get_any_name() for port in compiled.inputs]
        self.output_names = [port.get_any_name() for port in compiled.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the compiled model on `feeds`; outputs are copied out of the request."""
        result = self._request.infer(feeds)
        return {name: np.asarray(result[name]) for name in self.output_names}
