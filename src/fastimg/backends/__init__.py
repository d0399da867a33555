"""Engine backends behind one small interface: load a component, run it on named arrays."""

import contextlib
import dataclasses
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..errors import InputError
from .registry import BACKENDS, REGISTRY, describe

if TYPE_CHECKING:
    import numpy as np

# Whether OpenVINO also compiles each call's exact input shapes (auto: from a shape's 2nd call).
SHAPES = ("dynamic", "static", "auto")


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
    """The manifest variant `backend` runs in `precision` where a component has one."""
    return describe(backend).graph_variant(precision)


def component_variant(
    backend: str, manifest, component: str, precision: str, shapes: str = "dynamic"
) -> str | None:
    """The manifest variant `backend` loads for `component` in `precision` (None: the standard
    graph). Where it compiles each call's shapes (`shapes` static or auto) it loads the static
    counterpart of that graph where the component has one (OpenVINO: its GroupNorm graph for
    the standard one, the int8 graph quantized from it for the int8 one)."""
    description = describe(backend)
    variant = description.graph_variant(precision)
    own = bool(manifest.variant(component, variant))
    if shapes != "dynamic" and description.static_shapes:
        static = dict(description.static_graphs).get(variant if own else None)
        if static and manifest.variant(component, static):
            return static
    return variant if own else None


def compiled_cache(
    backend: str, manifest, component: str, precision: str, options: dict, label: str = ""
):
    """The keyed folder for what `backend` compiles of `component` (under COMPONENT+LABEL:
    each label keeps its own most recent keys), or None (nothing cached)."""
    folder = describe(backend).cache
    if folder is None:
        return None
    from ..engine_folder.compiled_cache import keyed_folder
    from ..machine import cpu_identity, package_version

    if not describe(backend).gpu:
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
    return keyed_folder(manifest.folder / folder, component + label, parts)


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


@dataclass(frozen=True)
class LoadOptions:
    """How one component's session is loaded; each backend's loader takes what applies to it.

    `names` are the graph's I/O names as the manifest gives them; `shapes` and `static_cache`
    (shapes -> cache folder) say whether OpenVINO also compiles each call's exact shapes;
    `fp16` False keeps ONNX Runtime's TensorRT engines in fp32 (a VAE that overflows in fp16);
    `dynamic_path` is the graph compiled for dynamic shapes where it is not the loaded one.
    """

    threads: int | None = None
    precision: str = "fp32"
    cache_dir: Path | None = None
    max_concurrency: int = 1
    device: int | None = None
    names: tuple[str, ...] = ()
    shapes: str = "dynamic"
    static_cache: object = None
    fp16: bool = True
    dynamic_path: Path | None = None  # --shapes auto: the graph for a shape's first call


def load_session(backend: str, path: Path, options: LoadOptions = LoadOptions()) -> Session:
    """Load the model file at `path` with the named (already resolved) backend's loader."""
    if backend not in REGISTRY:
        raise InputError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    module, _, name = describe(backend).loader.partition(":")
    return getattr(importlib.import_module(module), name)(path, options)


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
    description = describe(backend)
    if description.plan_sets:
        module, _, name = description.loader.partition(":")
        shared = getattr(importlib.import_module(module), name)(plans, device=device or 0)
        sessions = {
            name: _checked(shared.session(name), backend, manifest, name) for name in components
        }
        return Engines(
            backend, plans.precision, sessions, plans.key, "cuda", device or 0, shared.stream
        )
    sessions = {}
    for name in components:
        load = component_options(
            backend, manifest, name, precision, threads, max_concurrency, device, shapes
        )
        variant = component_variant(backend, manifest, name, precision, load.shapes)
        if load.shapes == "auto":  # a shape's first call runs the graph for dynamic shapes
            dynamic = component_variant(backend, manifest, name, precision)
            load = dataclasses.replace(load, dynamic_path=manifest.path(name, dynamic))
        session = load_session(backend, manifest.path(name, variant), load)
        sessions[name] = _checked(session, backend, manifest, name)
    # What the sessions really compiled (OpenVINO runs bf16 as fp32 on CPUs without bf16).
    effective = sorted({getattr(s, "precision", precision) for s in sessions.values()})
    if precision == "int8":  # the UNet's int8; the rest runs as OpenVINO's default here
        effective = ["int8"]
    gpu = description.gpu
    return Engines(
        backend,
        "+".join(effective),
        sessions,
        None,
        "cuda" if gpu else "cpu",
        (device or 0) if gpu else None,
    )


def component_options(
    backend: str,
    manifest,
    name: str,
    precision: str,
    threads: int | None = None,
    max_concurrency: int = 1,
    device: int | None = None,
    shapes: str = "dynamic",
    graph: str | None = None,
    inputs: dict | None = None,
) -> LoadOptions:
    """How component `name` loads on a resolved CPU-or-ORT backend, its compiled cache keyed to
    the backend, precision, device and graph; `graph` names a variant built from it at run time
    (a LoRA twin: cached apart, under COMPONENT-lora), `inputs` its inputs if they differ."""
    if backend == "openvino":
        from .openvino import compile_config
        from .openvino_rewrites import cache_key

        options = compile_config(precision, threads, max_concurrency)  # what is compiled with
        options.update(cache_key())  # and what the graph is rewritten by before
    else:
        options = {"device": device}
    if graph is not None:
        options = {**options, "graph_variant": graph}
    label = "" if graph is None else "-lora"
    # ONNX Runtime's TensorRT engines are built in fp16, except for a VAE that overflows in
    # it (SDXL's): that one is fp32, and keyed so.
    fp16 = not (name.startswith("vae") and manifest.vae_overflows_in_fp16)
    kept_fp32 = backend == "onnxruntime-tensorrt" and not fp16
    compiled_with = {**options, "fp16": False} if kept_fp32 else options
    cache_dir = compiled_cache(backend, manifest, name, precision, compiled_with, label=label)

    def static_cache(input_shapes: dict) -> Path | None:
        keyed = {**options, "static_shapes": input_shapes}
        return compiled_cache(backend, manifest, name, precision, keyed, label=label + "-static")

    spec = manifest.components[name]
    return LoadOptions(
        threads=threads,
        precision=precision,
        cache_dir=cache_dir,
        max_concurrency=max_concurrency,
        device=device,
        names=(*(inputs or spec["inputs"]), *spec["outputs"]),
        shapes=shapes if describe(backend).static_shapes else "dynamic",
        static_cache=static_cache,
        fp16=fp16,
    )


def _checked(session, backend: str, manifest, component: str):
    from .checked import CheckedSession

    spec = manifest.components[component]
    return CheckedSession(session, component, spec, manifest.vae_scale_factor, backend)
