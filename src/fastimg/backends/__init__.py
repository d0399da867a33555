"""Engine backends behind one small interface: load a component, run it on named arrays."""

from typing import Protocol

import numpy as np

from ..errors import InputError

BACKENDS = ("onnxruntime",)


class Session(Protocol):
    """One loaded engine: run(feeds) maps input names to arrays and returns named outputs."""

    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the engine on `feeds` and return every output by name."""
        ...


def load_session(backend: str, path, threads: int | None = None) -> Session:
    """Load the model file at `path` with the named backend."""
    if backend == "onnxruntime":
        from .onnxruntime import OnnxRuntimeSession

        return OnnxRuntimeSession(path, threads=threads)
    raise InputError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
