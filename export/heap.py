"""Garbage collection that skips the libraries: an export frees each model it is done with by
gc.collect(), and a full collection walks every object alive, half a million after torch,
diffusers and NNCF are imported (about a second a pass on a 2-core Xeon, the time of a tiny
model's whole component). Objects frozen (gc.freeze) are left out of every pass until thawed.
"""

import gc
import importlib
from collections.abc import Iterator
from contextlib import contextmanager

LIBRARIES = ("torch", "transformers", "diffusers", "onnx", "onnxruntime")
INT8_LIBRARIES = ("openvino", "nncf")


@contextmanager
def libraries_frozen(int8: bool = False) -> Iterator[None]:
    """Import the export's libraries (NNCF and OpenVINO too for `int8`), then leave everything
    alive now out of the collector's passes until the block ends; what the block makes (its
    models, graphs, compiled engines) is collected as before."""
    for name in LIBRARIES + (INT8_LIBRARIES if int8 else ()):
        try:
            importlib.import_module(name)
        except ImportError:  # (said by name where the export needs it)
            pass
    gc.collect()  # (what is garbage now is freed, not frozen)
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
