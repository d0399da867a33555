"""ONNX Runtime on the CPU."""

import threading
from pathlib import Path

import numpy as np

from ..errors import EngineError
from ..machine import available_cores
from .scratch import scratch_given_back


class OnnxRuntimeSession:
    """An onnxruntime.InferenceSession with threads set from the cores available.

    ONNX Runtime's run() may be called from several threads at once; at most `max_concurrency`
    calls run together (each already uses every core given to it).
    """

    def __init__(self, path: Path, threads: int | None = None, max_concurrency: int = 1):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or available_cores()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise EngineError(
                f"ONNX Runtime cannot load {path}: {exc}. Re-export the engine folder"
            ) from None
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]
        self.signature = {
            arg.name: (arg.type, len(arg.shape) if isinstance(arg.shape, list) else None)
            for arg in [*self._session.get_inputs(), *self._session.get_outputs()]
        }
        self._slots = threading.BoundedSemaphore(max_concurrency)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on `feeds`; every output comes back by name."""
        options = _arena_shrinking_options() if scratch_given_back() else None
        with self._slots:
            outputs = self._session.run(self.output_names, feeds, options)
        return dict(zip(self.output_names, outputs, strict=True))


def _arena_shrinking_options():
    """Run options that give the CPU arena's memory back when the run ends."""
    import onnxruntime as ort

    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


def load_session(path: Path, options) -> OnnxRuntimeSession:
    """The registry's loader: a CPU session with the threads and concurrency asked for."""
    return OnnxRuntimeSession(
        path, threads=options.threads, max_concurrency=options.max_concurrency
    )
