"""Engine backends behind one small interface: load a component, run it on named arrays."""

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..errors import InputError

if TYPE_CHECKING:
    import numpy as np

BACKENDS = ("onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16")


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
    raise InputError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
