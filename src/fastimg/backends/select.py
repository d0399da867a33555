"""Which backend and precision a run uses: what was asked for, else the fastest one here.

auto tries, in order: TensorRT (plans built for this GPU and TensorRT), ONNX Runtime's CUDA
provider, OpenVINO (bf16 where the CPU has it), ONNX Runtime on the CPU; and says why it
passed over a GPU backend when a GPU is present.
"""

import functools
import importlib.util
import logging

from ..errors import EngineError, InputError, MissingDependencyError
from .registry import (
    AUTO_ORDER,
    BACKEND_CHOICES,
    CUDA_FP16_VARIANT,
    INT8_VARIANT,
    PRECISION_CHOICES,
    REGISTRY,
)

log = logging.getLogger("fastimg")

# The precisions each backend runs (its default first).
SUPPORTED = {name: backend.precisions for name, backend in REGISTRY.items()}
# What to add to run a precision the backend asked for does not.
PRECISION_HINTS = {
    "bf16": "--backend openvino",
    "int8": "--backend openvino",
    "fp16": "--backend onnxruntime-cuda (or tensorrt)",
}


def installed(package: str) -> bool:
    """Whether a Python package can be imported here."""
    return importlib.util.find_spec(package) is not None


@functools.cache
def cpu_supports_bf16() -> bool:
    """Whether OpenVINO reports native bf16 arithmetic on this CPU (AVX-512 BF16 or AMX)."""
    if not installed("openvino"):
        return False
    import openvino

    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def gpu_present() -> bool:
    """Whether a CUDA GPU is visible (nvidia-smi or CuPy)."""
    from ..gpu import gpus

    return bool(gpus())


def unavailable(
    backend: str, manifest=None, device: int | None = None, precision: str = "auto"
) -> str | None:
    """Why `backend` cannot run here (in `precision`, if given; None when it can), in words a
    user can act on."""
    if backend == "onnxruntime":
        return _graph_precision_reason(backend, manifest, precision)
    if backend == "openvino":
        if not installed("openvino"):
            return "not installed: pip install 'fastimg[openvino]'"
        if precision == "int8" and manifest is not None:
            if not any(INT8_VARIANT in c.get("variants", {}) for c in manifest.components.values()):
                return (
                    "these engines have no int8 graph: export them with  fastimg export MODEL "
                    "-o FOLDER --int8  (needs fastimg[int8])"
                )
        return None
    if not installed("cupy"):
        return "needs CuPy for GPU arrays: pip install 'fastimg[gpu]'"
    if not gpu_present():
        return "no CUDA GPU is visible"
    if device is not None:
        from ..gpu import current_device

        try:
            current_device(device)
        except EngineError as exc:
            return str(exc)
    if backend in ("onnxruntime-cuda", "onnxruntime-tensorrt"):
        from .onnxruntime_gpu import cuda_providers, tensorrt_libraries_found

        provider = "Tensorrt" if backend.endswith("tensorrt") else "CUDA"
        if f"{provider}ExecutionProvider" not in cuda_providers():
            return f"this onnxruntime has no {provider} provider: install onnxruntime-gpu"
        if provider == "Tensorrt" and not tensorrt_libraries_found():
            return (
                "TensorRT's libraries (libnvinfer.so.10) are not found: pip install "
                "'fastimg[tensorrt]'"
            )
        return _graph_precision_reason(backend, manifest, precision)
    if not installed("tensorrt"):
        return "TensorRT is not installed: pip install 'fastimg[tensorrt]'"
    if manifest is not None:
        wanted = precision if precision in SUPPORTED["tensorrt"] else None
        try:
            tensorrt_plans_here(manifest, device, precision=wanted)
        except EngineError as exc:
            return str(exc)
    return None


def tensorrt_plans_here(manifest, device: int | None = None, **request):
    """The plan set for this TensorRT and GPU that fits `request` (height, width, batch,
    precision; any when not given); raises EngineError saying why there is none."""
    from ..gpu import compute_capability
    from .tensorrt_plans import find_plans

    version = __import__("tensorrt").__version__
    return find_plans(manifest, version, compute_capability(device), **request)


def resolve(
    backend: str = "auto",
    precision: str = "auto",
    manifest=None,
    device: int | None = None,
    exclude: tuple[str, ...] = (),
) -> tuple[str, str]:
    """(backend, precision) to run, 'auto' made concrete (never one of `exclude`); errors
    name the fix."""
    if backend not in BACKEND_CHOICES:
        raise InputError(f"unknown backend {backend!r}: choose one of {', '.join(BACKEND_CHOICES)}")
    if precision not in PRECISION_CHOICES:
        raise InputError(
            f"unknown precision {precision!r}: choose one of {', '.join(PRECISION_CHOICES)}"
        )
    if backend == "auto":
        backend = _auto(precision, manifest, device, exclude)
    else:
        reason = unavailable(backend, manifest, device, precision)
        if reason is not None:
            error = MissingDependencyError if "install" in reason else EngineError
            raise error(f"the {backend} backend cannot run here: {reason}")
    if precision == "auto":
        precision = _default_precision(backend, manifest, device)
    if precision not in SUPPORTED[backend]:
        hint = PRECISION_HINTS.get(precision, "")
        raise InputError(
            f"{precision} does not run on the {backend} backend (it runs "
            f"{', '.join(SUPPORTED[backend])})" + (f": add {hint}" if hint else "")
        )
    return backend, precision


def _auto(precision: str, manifest, device, exclude) -> str:
    wanted = [
        b
        for b in AUTO_ORDER
        if (precision == "auto" or precision in SUPPORTED[b])
        and b not in exclude
        # (fp16 on the CPU is a folder exported in fp16, never a choice for others)
        and not (b == "onnxruntime" and precision == "fp16" and not exported_in_fp16(manifest))
    ]
    if (
        {"openvino", "onnxruntime"} <= set(wanted)
        and has_winograd_graphs(manifest)
        and (precision == "fp32" or (precision == "auto" and not cpu_supports_bf16()))
    ):
        wanted.remove("onnxruntime")
        wanted.insert(wanted.index("openvino"), "onnxruntime")
    reasons = []
    for backend in wanted:
        reason = unavailable(backend, manifest, device, precision)
        if reason is None:
            if reasons and gpu_present():
                log.warning("GPU backends passed over: %s", "; ".join(reasons))
            return backend
        if REGISTRY[backend].gpu or precision != "auto":
            reasons.append(f"{backend}: {reason}")
    raise InputError(f"no backend here runs {precision}: {'; '.join(reasons)}")


def _graph_precision_reason(backend: str, manifest, precision: str) -> str | None:
    """Why ONNX Runtime (which runs a folder's graphs as they were exported) has no graph in
    `precision` for this folder; None where it has."""
    if precision == "fp32" and exported_in_fp16(manifest):
        return (
            "these engines were exported in fp16 (export --precision fp16) and have no fp32 "
            "graphs: run them in fp16 (leave --precision out, or ask for fp16), or export the "
            "model again without --precision fp16 for the exact fp32 path"
        )
    if precision != "fp16" or backend == "onnxruntime-tensorrt":
        return None  # TensorRT builds its fp16 engines from the fp32 graphs
    if manifest is None:
        return None  # which graphs a folder has is checked again once it is loaded
    if backend == "onnxruntime" and not exported_in_fp16(manifest):
        return (
            "fp16 on the CPU runs only engines exported in fp16 (export --precision fp16); "
            f"these are fp32. For fp16 on a GPU add {PRECISION_HINTS['fp16']}"
        )
    if not has_fp16_graphs(manifest):
        return (
            "these engines have no fp16 graphs for the GPU: export them with  fastimg "
            "export MODEL -o FOLDER --cuda-fp16"
        )
    return None


def exported_in_fp16(manifest) -> bool:
    """Whether the engine folder was exported in fp16 (export --precision fp16): its graphs are
    fp16 (an SDXL VAE's excepted), so ONNX Runtime has no fp32 ones to run."""
    return manifest is not None and manifest.component_precision("unet") == "fp16"


def has_fp16_graphs(manifest) -> bool:
    """Whether ONNX Runtime CUDA can run this engine folder in fp16: its UNet has an fp16 graph
    for the GPU (export --cuda-fp16), or the folder was exported in fp16."""
    return bool(manifest.variant("unet", CUDA_FP16_VARIANT)) or exported_in_fp16(manifest)


def has_winograd_graphs(manifest) -> bool:
    """Whether ONNX Runtime's graphs of this engine folder run convolutions in Winograd form:
    in fp32 on the CPU they ran sd15's 512 job 1.38x faster than OpenVINO (2-core AVX2 EPYC,
    bench/results/sd15-512-winograd.json), so auto picks ONNX Runtime for fp32 there."""
    if manifest is None:
        return False
    return any(manifest.variant(c, "onnxruntime").get("winograd") for c in manifest.components)


def _default_precision(backend: str, manifest, device) -> str:
    if backend == "openvino":
        return "bf16" if cpu_supports_bf16() else "fp32"
    if (
        "fp16" in SUPPORTED[backend]
        and not REGISTRY[backend].plan_sets  # (TensorRT's plan sets decide, below)
        and manifest is not None
        and _graph_precision_reason(backend, manifest, "fp16") is None
    ):
        return "fp16"  # the folder has fp16 graphs for it (--cuda-fp16, or exported in fp16)
    if backend == "tensorrt" and manifest is not None:
        # fp16 where plans for this TensorRT and GPU exist in fp16, else what exists.
        for precision in SUPPORTED["tensorrt"]:
            try:
                tensorrt_plans_here(manifest, device, precision=precision)
            except EngineError:
                continue
            return precision
    return SUPPORTED[backend][0]
