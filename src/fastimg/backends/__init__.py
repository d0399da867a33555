"""Engine backends behind one small interface: load a component, run it on named arrays."""

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..errors import InputError

if TYPE_CHECKING:
    import numpy as np

BACKENDS = ("tensorrt", "onnxruntime-cuda", "openvino", "onnxruntime", "onnxruntime-tensorrt")
GPU_BACKENDS = ("tensorrt", "onnxruntime-cuda", "onnxruntime-tensorrt")
# ONNX Runtime's TensorRT provider compiles engines on first use (minutes): asked for, never auto.
AUTO_ORDER = ("tensorrt", "onnxruntime-cuda", "openvino", "onnxruntime")
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
# The manifest's name for a component's int8 OpenVINO graph (what --precision int8 loads).
INT8_VARIANT = "openvino-int8"
# Whether OpenVINO also compiles each call's exact input shapes (auto: from a shape's 2nd call).
SHAPES = ("dynamic", "static", "auto")
# Backends that compile the ONNX graphs keep what they compiled beside the engines, by key.
CACHES = {"openvino": "openvino_cache", "onnxruntime-tensorrt": "ort_tensorrt_cache"}


class Session(Protocol):
    """One loaded engine: run(feeds) maps input names to arrays and returns named outputs."""

    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: "dict[str, np.ndarray]") -> "dict[str, np.ndarray]":
        """Run the engine on `feeds` and return every output by name (safe from any thread)."""
        ...


@dataclass
class Engines:
    """The components of an engine folder loaded on one backend (and TensorRT plan set)."""

    backend: str
    precision: str
    sessions: dict
    plan_set: str | None = None
    device: str = "cpu"
    device_index: int | None = None
    stream: object = field(default=None, repr=False)
    xp: object = field(default=None, repr=False)  # numpy, or cupy on a GPU

    @property
    def label(self) -> str:
        """'openvino bf16', 'tensorrt fp16 (plans KEY)': what ran, in words."""
        plans = f" (plans {self.plan_set})" if self.plan_set else ""
        return f"{self.backend} {self.precision}{plans}"

    def activate(self):
        """A context in which array work runs on these engines' device and stream."""
        if self.device == "cpu":
            return contextlib.nullcontext()
        import cupy

        stack = contextlib.ExitStack()
        stack.enter_context(cupy.cuda.Device(self.device_index or 0))
        if self.stream is not None:
            stack.enter_context(self.stream)
        return stack


def graph_variant(backend: str, precision: str) -> str:
    """The manifest variant a backend runs where a component has one: the int8 UNet for
    OpenVINO int8, else the backend's own (ONNX Runtime's fused attention graphs on the CPU).

    ONNX Runtime CUDA keeps the standard graphs: with the fused MultiHeadAttention graphs the
    sd15 512 job on an H200 in fp32 took 0.36 s against 0.32 s (bench/results/README.md).
    """
    if backend == "openvino" and precision == "int8":
        return INT8_VARIANT
    return backend


def compiled_cache(
    backend: str, manifest, component: str, precision: str, options: dict, label: str = ""
):
    """The keyed folder for what `backend` compiles of `component` (under COMPONENT+LABEL:
    each label keeps its own most recent keys), or None (nothing cached)."""
    if backend not in CACHES:
        return None
    from ..engine_folder.compiled_cache import keyed_folder
    from ..machine import cpu_identity, package_version

    if backend == "openvino":
        device = cpu_identity()
        version = package_version("openvino")
    else:
        from ..gpu import device_properties

        name, capability = device_properties(options.get("device"))
        device = f"{name} sm{capability}"
        version = f"onnxruntime {_ort_version()}, tensorrt {package_version('tensorrt')}"
    parts = {
        "backend": backend,
        "version": version,
        "precision": precision,
        "device": device,
        "options": options,
        "graph": manifest.graph_digest((component,)),
    }
    return keyed_folder(manifest.folder / CACHES[backend], component + label, parts)


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def load_session(
    backend: str,
    path: Path,
    threads: int | None = None,
    precision: str = "fp32",
    cache_dir: Path | None = None,
    max_concurrency: int = 1,
    device: int | None = None,
    names: tuple[str, ...] = (),
    shapes: str = "dynamic",
    static_cache=None,
    fp16: bool = True,
) -> Session:
    """Load the model file at `path` with the named (already resolved) backend; `names` are
    the graph's I/O names as the manifest gives them; `shapes` and `static_cache` (shapes ->
    cache folder) say whether OpenVINO also compiles each call's exact shapes; `fp16` False
    keeps ONNX Runtime's TensorRT engines in fp32 (a VAE that overflows in fp16)."""
    if backend == "onnxruntime":
        from .onnxruntime import OnnxRuntimeSession

        return OnnxRuntimeSession(path, threads=threads, max_concurrency=max_concurrency)
    if backend == "openvino":
        from .openvino import OpenVinoSession

        return OpenVinoSession(
            path,
            threads=threads,
            precision=precision,
            cache_dir=cache_dir,
            max_concurrency=max_concurrency,
            names=names,
            shapes=shapes,
            static_cache=static_cache,
        )
    if backend in ("onnxruntime-cuda", "onnxruntime-tensorrt"):
        from .onnxruntime_gpu import OnnxRuntimeCudaSession

        provider = backend.removeprefix("onnxruntime-")
        return OnnxRuntimeCudaSession(
            path, provider=provider, cache_dir=cache_dir, device=device or 0, fp16=fp16
        )
    raise InputError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")


def load_engines(
    backend: str,
    manifest,
    components,
    precision: str,
    threads: int | None = None,
    max_concurrency: int = 1,
    device: int | None = None,
    plans=None,
    shapes: str = "dynamic",
) -> Engines:
    """Every component of an engine folder on a resolved backend (TensorRT: the plan set
    `plans`), with its compiled cache keyed to this backend, precision, device and graph
    (and, for OpenVINO's static shapes, to the shapes)."""
    if backend == "tensorrt":
        from .tensorrt import TensorRTEngines

        shared = TensorRTEngines(plans, device=device or 0)
        sessions = {
            name: _checked(shared.session(name), backend, manifest, name) for name in components
        }
        return Engines(
            backend, plans.precision, sessions, plans.key, "cuda", device or 0, shared.stream
        )
    if backend == "openvino":
        from .openvino import compile_config

        options = compile_config(precision, threads, max_concurrency)  # what is compiled with
    else:
        options = {"device": device}
    sessions = {}
    for name in components:
        # ONNX Runtime's TensorRT engines are built in fp16, except for a VAE that overflows in
        # it (SDXL's): that one is fp32, and keyed so.
        fp16 = not (name.startswith("vae") and manifest.vae_overflows_in_fp16)
        kept_fp32 = backend == "onnxruntime-tensorrt" and not fp16
        compiled_with = {**options, "fp16": False} if kept_fp32 else options
        cache_dir = compiled_cache(backend, manifest, name, precision, compiled_with)

        def static_cache(input_shapes: dict, name=name) -> Path | None:
            keyed = {**options, "static_shapes": input_shapes}
            return compiled_cache(backend, manifest, name, precision, keyed, label="-static")

        variant = graph_variant(backend, precision)
        session = load_session(
            backend,
            manifest.path(name, variant),
            threads=threads,
            precision=precision,
            cache_dir=cache_dir,
            max_concurrency=max_concurrency,
            device=device,
            names=(*manifest.components[name]["inputs"], *manifest.components[name]["outputs"]),
            shapes=shapes if backend == "openvino" else "dynamic",
            static_cache=static_cache,
            fp16=fp16,
        )
        sessions[name] = _checked(session, backend, manifest, name)
    # What the sessions really compiled (OpenVINO runs bf16 as fp32 on CPUs without bf16).
    effective = sorted({getattr(s, "precision", precision) for s in sessions.values()})
    if precision == "int8":  # the UNet's int8; the rest runs as OpenVINO's default here
        effective = ["int8"]
    gpu = backend in GPU_BACKENDS
    return Engines(
        backend,
        "+".join(effective),
        sessions,
        None,
        "cuda" if gpu else "cpu",
        (device or 0) if gpu else None,
    )


def _checked(session, backend: str, manifest, component: str):
    from .checked import CheckedSession

    spec = manifest.components[component]
    return CheckedSession(session, component, spec, manifest.vae_scale_factor, backend)
