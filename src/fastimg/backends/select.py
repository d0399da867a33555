"""Which backend and precision a run uses: what was asked for, else the fastest one here."""

import importlib.util
import logging

from ..errors import InputError, MissingDependencyError
from . import BACKENDS, PRECISIONS

log = logging.getLogger("fastimg")

BACKEND_CHOICES = ("auto", *BACKENDS)
PRECISION_CHOICES = ("auto", *PRECISIONS)
EXTRA = {"onnxruntime": "fastimg", "openvino": "openvino"}


def installed(backend: str) -> bool:
    """Whether the backend's Python package can be imported here."""
    return importlib.util.find_spec(backend) is not None


def cpu_supports_bf16() -> bool:
    """Whether OpenVINO reports native bf16 arithmetic on this CPU (AVX-512 BF16 or AMX)."""
    if not installed("openvino"):
        return False
    import openvino

    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def resolve(backend: str = "auto", precision: str = "auto") -> tuple[str, str]:
    """(backend, precision) to run: 'auto' picks OpenVINO (bf16 where the CPU has it)."""
    if backend not in BACKEND_CHOICES:
        raise InputError(f"unknown backend {backend!r}: choose one of {', '.join(BACKEND_CHOICES)}")
    if precision not in PRECISION_CHOICES:
        raise InputError(
            f"unknown precision {precision!r}: choose one of {', '.join(PRECISION_CHOICES)}"
        )
    if backend == "auto":
        backend = "openvino" if installed("openvino") else "onnxruntime"
    elif not installed(backend):
        raise MissingDependencyError(
            f"the {backend} backend is not installed: install it with  "
            f"pip install 'fastimg[{EXTRA[backend]}]'"
        )
    if precision == "auto":
        precision = "bf16" if backend == "openvino" and cpu_supports_bf16() else "fp32"
    if precision == "bf16" and backend != "openvino":
        raise InputError("bf16 runs on the openvino backend only: add --backend openvino")
    if precision == "bf16" and not cpu_supports_bf16():
        log.warning("this CPU has no native bf16; OpenVINO will emulate it slowly")
    return backend, precision
