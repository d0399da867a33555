"""ONNX Runtime on the CPU."""

import logging
import threading
from pathlib import Path

import numpy as np

from ..errors import EngineError
from ..machine import available_cores
from .scratch import give_back_after_the_call, scratch_given_back

log = logging.getLogger("fastimg")


class OnnxRuntimeSession:
    """An onnxruntime.InferenceSession with threads set from the cores available.

    ONNX Runtime's run() may be called from several threads at once; at most `max_concurrency`
    calls run together (each already uses every core given to it).
    """

    def __init__(self, path: Path, threads: int | None = None, max_concurrency: int = 1):
        self._path, self._threads = path, threads or available_cores()
        self._session = self._load()
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]
        self.signature = {
            arg.name: (arg.type, len(arg.shape) if isinstance(arg.shape, list) else None)
            for arg in [*self._session.get_inputs(), *self._session.get_outputs()]
        }
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._max_concurrency = max_concurrency

    def _load(self):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            return ort.InferenceSession(
                str(self._path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise EngineError(
                f"ONNX Runtime cannot load {self._path}: {exc}. Re-export the engine folder"
            ) from None

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on `feeds`; every output comes back by name."""
        options = None
        if scratch_given_back():
            options = _arena_shrinking_options()
            give_back_after_the_call(self)
        with self._slots:
            if self._session is None:  # its load in give_back() failed: again
                self._session = self._load()
            outputs = self._session.run(self.output_names, feeds, options)
        return dict(zip(self.output_names, outputs, strict=True))

    def give_back(self) -> None:
        """After a call far larger than the usual: the session loaded anew, unless a caller
        runs on it now. The arena shrinks as such a run ends, but the session keeps buffers
        sized for it beside the arena (33 MiB after two 1024 px images through the tiny VAE
        decoder); a new session holds none of them."""
        taken = 0
        try:
            while taken < self._max_concurrency and self._slots.acquire(blocking=False):
                taken += 1
            if taken == self._max_concurrency:
                self._session = None  # the old session goes before the new one loads
                self._session = self._load()
        except EngineError as exc:  # the next run loads it
            log.warning("%s was not loaded again after giving its memory back: %s",
                        self._path, exc)  # fmt: skip
        finally:
            for _ in range(taken):
                self._slots.release()


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
