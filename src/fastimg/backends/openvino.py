"""OpenVINO on the CPU: reads the exported ONNX, compiles once, caches the compiled model."""

from pathlib import Path

import numpy as np

from ..errors import EngineError, require
from ..machine import available_cores
from .pool import Pool

OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}


def compile_config(precision: str, threads: int | None, max_concurrency: int) -> dict:
    """The properties a model is compiled with (they are part of its cache key too)."""
    config = {
        "INFERENCE_PRECISION_HINT": OV_PRECISION[precision],
        "INFERENCE_NUM_THREADS": threads or available_cores(),
    }
    if max_concurrency > 1:  # one stream per concurrent request, the cores shared out
        config.update(PERFORMANCE_HINT="THROUGHPUT", PERFORMANCE_HINT_NUM_REQUESTS=max_concurrency)
    else:
        config["PERFORMANCE_HINT"] = "LATENCY"
    return config


class OpenVinoSession:
    """A compiled OpenVINO model and a pool of infer requests (one per concurrent caller)."""

    def __init__(
        self,
        path: Path,
        threads: int | None = None,
        precision: str = "fp32",
        cache_dir: Path | None = None,
        max_concurrency: int = 1,
    ):
        ov = require("openvino", "openvino")
        config = compile_config(precision, threads, max_concurrency)
        if cache_dir is not None:
            config["CACHE_DIR"] = str(cache_dir)
        try:
            compiled = ov.Core().compile_model(str(path), "CPU", config)
        except Exception as exc:  # OpenVINO raises untyped RuntimeErrors
            raise EngineError(
                f"OpenVINO cannot load {path}: {exc}. Re-export the engine folder, "
                "or run with --backend onnxruntime"
            ) from None
        # On a CPU without native bf16 OpenVINO quietly compiles f32: say what it really runs.
        hint = str(compiled.get_property("INFERENCE_PRECISION_HINT")).lower()
        self.precision = "bf16" if "bf16" in hint else "fp32"
        self._requests = Pool(compiled.create_infer_request, max_concurrency)
        self.input_names = [port.get_any_name() for port in compiled.inputs]
        self.output_names = [port.get_any_name() for port in compiled.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the compiled model on `feeds`; outputs are copied out of the request."""
        with self._requests.lend() as request:
            result = request.infer(feeds)
            return {name: np.array(result[name]) for name in self.output_names}
