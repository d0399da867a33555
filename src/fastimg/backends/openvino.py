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


def compiled_precision(hint) -> str:
    """'bf16' or 'fp32': what a compiled model's INFERENCE_PRECISION_HINT (an ov.Type) says."""
    return "bf16" if hint.get_type_name() == "bf16" else "fp32"


class OpenVinoSession:
    """A compiled OpenVINO model and a pool of infer requests (one per concurrent caller)."""

    def __init__(
        self,
        path: Path,
        threads: int | None = None,
        precision: str = "fp32",
        cache_dir: Path | None = None,
        max_concurrency: int = 1,
        names: tuple[str, ...] = (),
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
        self.precision = compiled_precision(compiled.get_property("INFERENCE_PRECISION_HINT"))
        self._requests = Pool(compiled.create_infer_request, max_concurrency)
        # A port may carry several tensor names; the graph's own I/O name is the one wanted.
        self.input_names = [_name(port, names) for port in compiled.inputs]
        self.output_names = [_name(port, names) for port in compiled.outputs]
        self.signature = {
            _name(port, names): (port.get_element_type().get_type_name(), _rank(port))
            for port in [*compiled.inputs, *compiled.outputs]
        }

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the compiled model on `feeds`; outputs are copied out of the request."""
        with self._requests.lend() as request:
            result = request.infer(feeds)
            return {name: np.array(result[name]) for name in self.output_names}


def _rank(port) -> int | None:
    rank = port.get_partial_shape().rank
    return rank.get_length() if rank.is_static else None


def _name(port, wanted: tuple[str, ...]) -> str:
    """The port's name among `wanted` (the manifest's I/O names), else any of its names."""
    return next((n for n in wanted if n in port.get_names()), None) or port.get_any_name()
