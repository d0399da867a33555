"""Build TensorRT engines (plans) for the local GPU from an engine folder's ONNX files.

Written against the TensorRT Python API of releases 10.x and 11.x: networks are strongly typed
(11.x makes that the only kind; 10.x is asked for it with the STRONGLY_TYPED flag), so the
precision of a plan is the precision of the ONNX graph it is parsed from. fp16 plans come from
an fp16 copy of the graph (the exporter's converter, float32 I/O kept); the VAE stays fp32 by
default because SD's VAE overflows in fp16.

Plans are written under tensorrt/.KEY.partial-PID, renamed to tensorrt/KEY when all are built,
and only then listed in the manifest (rewritten atomically), so an interrupted build leaves
the folder as it was.
"""

import contextlib
import hashlib
import os
import shutil
import time
from pathlib import Path

from fastimg.atomic import make_staging_folder, write_atomically
from fastimg.backends.tensorrt_plans import PRECISIONS, engine_key, trt_release
from fastimg.engine_folder.layout import MANIFEST
from fastimg.engine_folder.manifest import DEFAULT_MAX_SIDE, Manifest, load_manifest
from fastimg.engine_folder.profiles import Profile, input_shapes, is_static_input
from fastimg.engine_folder.schema import serialise
from fastimg.errors import EngineError, InputError, require
from fastimg.gpu import device_properties

from . import onnx_export
from .engine_writer import file_entries, remove_stale_staging
from .folders import replace_folder, writer_lock

OPT_LEVELS = range(0, 6)


def progress_monitor(trt, log):
    """A TensorRT IProgressMonitor that prints the top-level build phases and their times."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.started = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.started[phase_name] = time.perf_counter()
            if parent_phase is None:
                log(f"    {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            began = self.started.pop(phase_name, None)
            if began is not None and not self.started:
                log(f"    {phase_name} done in {time.perf_counter() - began:.1f} s")

    return Monitor()


def check_profile(profile: Profile, manifest: Manifest) -> None:
    """Refuse a profile the engines cannot take (sizes off the latent grid, too large)."""
    factor = manifest.vae_scale_factor
    for name, r in (("height", profile.height), ("width", profile.width)):
        if any(v % factor for v in r):
            raise InputError(f"every {name} must be a multiple of {factor}, got {r}")
        limit = manifest.max_side or DEFAULT_MAX_SIDE
        if r[2] > limit or r[0] < 64:
            raise InputError(f"{name} must lie between 64 and {limit}, got {r}")
    if profile.batch[2] > 16:
        raise InputError(
            f"a batch of up to {profile.batch[2]} images is more than fastimg builds for (16)"
        )


def _source_onnx(manifest: Manifest, component: str, precision: str, scratch: Path) -> Path:
    """The ONNX file to parse for a component in `precision`, converted to fp16 if needed."""
    exported = manifest.component_precision(component)
    path = manifest.path(component)
    if exported == precision:
        return path
    if exported == "fp16":
        raise InputError(
            f"{manifest.folder} was exported in fp16, so fp32 {component} plans cannot be built "
            "from it: export again with --precision fp32"
        )
    dest = scratch / component / "model.onnx"
    onnx_export.save_model(path, dest, fp16=True)
    return dest


def _build_plan(trt, logger, onnx_path: Path, shapes: dict, opt_level: int, cache, log) -> bytes:
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.builder_optimization_level = opt_level
    config.set_timing_cache(cache, False)
    config.progress_monitor = progress_monitor(trt, log)
    if shapes:  # (a graph of fixed shapes only, the depth model's, needs no profile)
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in shapes.items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(
            f"TensorRT could not build {onnx_path} (see its log above; out of GPU memory is the "
            "usual cause: close other GPU programs or build a smaller profile)"
        )
    return bytes(plan)


def dynamic_shapes(manifest: Manifest, profile: Profile) -> dict[str, dict]:
    """component -> its inputs' profile shapes, for every component a plan set holds
    (runtime_components), less the inputs of fixed shape (TensorRT profiles size dynamic
    inputs only: a ControlNet's conditioning_scale, the depth model's pixel_values)."""
    shapes = input_shapes(profile, manifest)
    return {
        component: {
            name: shape
            for name, shape in shapes[component].items()
            if not is_static_input(manifest.components[component]["inputs"][name])
        }
        for component in manifest.runtime_components
    }


def build_engines(
    folder: str | Path,
    profile: Profile,
    precision: str = "fp16",
    vae_precision: str = "fp32",
    opt_level: int = 3,
    rebuild: bool = False,
    log=print,
    device: int | None = None,
) -> str:
    """Build a plan per component the runtime runs (SDXL: both text encoders; ControlNets, the
    UNet taking their residuals, the depth model) of `profile` for this GPU (CUDA device
    `device`, default: the current one); return their key (kept if built already)."""
    if precision not in PRECISIONS or vae_precision not in PRECISIONS:
        raise InputError(f"precisions must be one of {', '.join(PRECISIONS)}")
    if opt_level not in OPT_LEVELS:
        raise InputError("the builder optimization level must be between 0 and 5")
    manifest = load_manifest(folder)
    if vae_precision == "fp16" and manifest.vae_overflows_in_fp16:
        raise InputError(
            f"the VAE in {folder} overflows in fp16 (SDXL's, as its config's force_upcast says; "
            "diffusers upcasts it too): build with --vae-precision fp32 (the default), or export "
            "with --vae madebyollin/sdxl-vae-fp16-fix, a VAE made for fp16"
        )
    check_profile(profile, manifest)
    with writer_lock(Path(folder).absolute()):  # no export or build writes it meanwhile
        return _build_locked(
            folder, profile, precision, vae_precision, opt_level, rebuild, log, device
        )


def _build_locked(folder, profile, precision, vae_precision, opt_level, rebuild, log, device):
    manifest = load_manifest(folder)
    trt = require("tensorrt", "tensorrt")
    gpu_name, capability = device_properties(device)
    graph = manifest.graph_digest()
    key = engine_key(
        trt.__version__, capability, profile, precision, vae_precision, opt_level, graph
    )
    if key in manifest.plan_sets and not rebuild:
        log(f"engines {key} are already built (pass --rebuild to build them again)")
        return key
    root = manifest.folder / "tensorrt"
    root.mkdir(exist_ok=True)
    remove_stale_staging(root, ".*.partial-*")  # left by builds that were killed
    sm = capability.replace(".", "")
    gpu = hashlib.sha256(gpu_name.encode()).hexdigest()[:8]  # kernels are timed on this model
    cache_path = root / f"timing_trt{trt_release(trt.__version__)}_sm{sm}_gpu{gpu}.cache"
    logger = trt.Logger(trt.Logger.WARNING)
    config_for_cache = trt.Builder(logger).create_builder_config()
    cache = config_for_cache.create_timing_cache(
        cache_path.read_bytes() if cache_path.is_file() else b""
    )
    shapes = dynamic_shapes(manifest, profile)
    staging = make_staging_folder(root, f".{key}.partial-{os.getpid()}-")
    on_device = contextlib.nullcontext()
    if device is not None:
        on_device = require("cupy", "gpu").cuda.Device(device)
    try:
        with on_device:  # TensorRT builds on the current CUDA device
            entries = {}
            scratch = staging / ".fp16-onnx"  # inside staging: a killed build leaves one folder
            for component in manifest.runtime_components:  # SDXL: both text encoders
                wanted = vae_precision if component.startswith("vae") else precision
                log(f"building {component} ({wanted}, {profile.key()})")
                started = time.perf_counter()
                source = _source_onnx(manifest, component, wanted, scratch)
                plan = _build_plan(trt, logger, source, shapes[component], opt_level, cache, log)
                (staging / f"{component}.plan").write_bytes(plan)
                entries[component] = {
                    "path": f"tensorrt/{key}/{component}.plan",
                    "precision": wanted,
                }
                log(
                    f"  {component}: {len(plan) / 2**20:.0f} MiB in "
                    f"{time.perf_counter() - started:.0f} s"
                )
        shutil.rmtree(scratch, ignore_errors=True)
        cache_path.write_bytes(bytes(cache.serialize()))
        replace_folder(staging, root / key)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for entry in entries.values():
        entry["files"] = file_entries(manifest.folder, [manifest.folder / entry["path"]])
    data = dict(manifest.data)
    engines = dict(manifest.plan_sets)
    engines[key] = {
        "tensorrt": trt.__version__,
        "compute_capability": capability,
        "precision": precision,
        "vae_precision": vae_precision,
        "profile": profile.to_dict(),
        "builder_optimization_level": opt_level,
        "graph_sha256": graph,
        "gpu": gpu_name,
        "components": entries,
    }
    data["tensorrt"] = {"engines": engines}
    fix = "this is a bug in the build; please report it"
    text = serialise(data, f"the manifest written to {manifest.folder}", fix).encode()
    write_atomically(manifest.folder / MANIFEST, lambda f: f.write(text))
    return key
