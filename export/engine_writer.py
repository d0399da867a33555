"""Write a verified ONNX engine folder: components, tokenizer, scheduler config, manifest.

The folder is assembled under a hidden staging name beside the destination and renamed into place
only after every component has passed verification, so an interrupted or failed export never
leaves a folder that looks valid, and an existing engine survives until the new one is complete.
"""

import datetime
import errno
import gc
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from fastimg import __version__
from fastimg.atomic import make_staging_folder
from fastimg.backends.registry import CUDA_FP16_VARIANT, INT8_VARIANT, STATIC_VARIANT
from fastimg.engine_folder.integrity import sha256
from fastimg.engine_folder.layout import FORMAT, FORMAT_VERSION, MANIFEST
from fastimg.engine_folder.schema import serialise
from fastimg.errors import EngineError, InputError, OutputError

from . import attention, onnx_export, verify, winograd
from .folders import replace_folder, writer_lock
from .heap import libraries_frozen
from .loading import (
    add_controlnet,
    check_vae_fits,
    is_inpainting,
    load_controlnet,
    load_pipeline,
    load_vae,
)
from .lora import check_sources, fuse_loras
from .memory_model import WINOGRAD_ACTIVATIONS, memory_model
from .memory_watch import PeakWatch
from .openvino_graph import write_openvino_graph

CUDA_FP16_FILE = "model.fp16.onnx"  # a component's fp16 graph for the GPU (--cuda-fp16)

PRECISIONS = ("fp32", "fp16")


def file_entries(folder: Path, files: list[Path]) -> dict:
    """Manifest entries (path relative to `folder` -> bytes, sha256) of `files`."""
    return {
        str(f.relative_to(folder)): {"bytes": f.stat().st_size, "sha256": sha256(f)} for f in files
    }


def _check_destination(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError(f"{out} exists and is not a folder: choose another output path")
    if not any(out.iterdir()):
        return
    if not (out / MANIFEST).is_file():
        raise InputError(
            f"{out} exists and is not a fastimg engine folder; refusing to replace it: "
            "choose another output path"
        )
    if not overwrite:
        raise InputError(f"{out} already holds engines: pass --overwrite to replace them")


def _model_family(pipe) -> str:
    if onnx_export.is_sdxl(pipe):
        return "sdxl-refiner" if pipe.config.requires_aesthetics_score else "sdxl"
    width = pipe.unet.config.cross_attention_dim
    return {768: "sd1", 1024: "sd2"}.get(width, "sd-custom")


def _write_tokenizer(pipe, folder: Path, name: str = "tokenizer") -> dict:
    tokenizer = getattr(pipe, name)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        from transformers.convert_slow_tokenizer import convert_slow_tokenizer

        backend = convert_slow_tokenizer(tokenizer)
    path = folder / name / "tokenizer.json"
    path.parent.mkdir(parents=True)
    backend.save(str(path))
    return {
        "path": f"{name}/tokenizer.json",
        "max_length": int(tokenizer.model_max_length),
        "pad_id": int(tokenizer.pad_token_id),
        "files": file_entries(folder, [path]),
    }


def _first_tokenizer(pipe) -> str:
    """The tokenizer the manifest's `tokenizer` entry names (the refiner has only its second)."""
    return "tokenizer" if getattr(pipe, "tokenizer", None) is not None else "tokenizer_2"


def _xl_entries(pipe, folder: Path, first: dict) -> dict:
    """An SDXL manifest's additions: the second tokenizer (the refiner's only one) and how
    prompts become the UNet's embeddings and added conditioning, from the pipeline config."""
    encoders = [n for n in onnx_export.component_names(pipe) if n.startswith("text_encoder")]
    second = first if pipe.text_encoder is None else None  # (the refiner has one)
    entries = {
        "tokenizer_2": second or _write_tokenizer(pipe, folder, "tokenizer_2"),
        "text_conditioning": {
            "text_encoders": encoders,
            "pooled": "text_encoder_2",
            "force_zeros_for_empty_prompt": bool(pipe.config.force_zeros_for_empty_prompt),
            "requires_aesthetics_score": bool(pipe.config.requires_aesthetics_score),
        },
    }
    return entries


def _control_entry(pipe, sources: list[str]) -> dict:
    """The manifest's `control`: the ControlNet components in order (`sources`: where each
    came from), the UNet that takes their summed residuals, and the residuals' names (each
    ControlNet's outputs, that UNet's inputs)."""
    nets = onnx_export.controlnets(pipe)
    return {
        "controlnets": [
            {
                "component": name,
                "source": str(source),
                "conditioning_channels": int(net.config.conditioning_channels),
            }
            for (name, net), source in zip(nets, sources, strict=True)
        ],
        "unet": onnx_export.CONTROL_UNET,
        "residuals": onnx_export.residual_names(pipe.unet.config),
    }


def _write_scheduler(pipe, folder: Path) -> dict:
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in pipe.scheduler.config.items()}
    config["_class_name"] = type(pipe.scheduler).__name__
    path = folder / "scheduler" / "scheduler_config.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(config, indent=2, sort_keys=True))
    return config


def _tool_versions() -> dict:
    import importlib.metadata as md

    names = ("torch", "diffusers", "transformers", "onnx", "onnxruntime")
    return {"fastimg": __version__, **{n: md.version(n) for n in names}}


def remove_stale_staging(parent: Path, pattern: str) -> None:
    """Delete staging folders `parent/pattern` (NAME.partial-PID-*) whose process is gone."""
    for folder in parent.glob(pattern):
        pid = folder.name.rsplit(".partial-", 1)[-1].split("-", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # signal 0 is a probe only on POSIX; elsewhere keep every folder
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    return True


def export_engines(
    model: str,
    out: str | Path,
    precision: str = "fp32",
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    vae: str | None = None,
    loras: list[str] = (),
    int8_images: int = 0,
    controlnets: list[str] = (),
    depth_model: str | None = None,
    int8_unet: str = "auto",
    cuda_fp16: bool = False,
) -> Path:
    """Export `model` (folder, checkpoint or hub id) to a verified ONNX engine folder `out`;
    `vae` (a folder or hub id, e.g. TAESD) replaces the model's own VAE; `loras`
    ('FILE_OR_ID[:SCALE]') are fused into the weights first; `int8_images` > 0 also writes
    an int8 UNet for OpenVINO, calibrated on that many images (`int8_unet`: its method,
    'hybrid', 'full' or 'auto': both measured, one kept); `controlnets` (folders or hub
    ids, in order, after any the model has) are exported beside the UNet, each its own
    component, with a UNet that takes their summed residuals; `depth_model` (a DPT folder or hub
    id) is exported as the `depth` component, for control_preprocess depth; `cuda_fp16` also
    writes each component's graph in fp16 for ONNX Runtime CUDA (a VAE that overflows in fp16
    stays fp32)."""
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if int8_images:
        from fastimg.errors import require

        require("nncf", "int8")  # before any export work
        if int8_images < 2:
            raise InputError("an int8 export needs at least 2 calibration images")
    if int8_unet not in ("auto", "hybrid", "full"):
        raise InputError(f"int8_unet must be auto, hybrid or full, got {int8_unet!r}")
    lora_sources = check_sources(list(loras))
    out = Path(out).absolute()
    _check_destination(out, overwrite)
    with writer_lock(out), PeakWatch() as memory, libraries_frozen(int8=bool(int8_images)):
        _check_destination(out, overwrite)  # again: another writer may have finished meanwhile
        written = _export_locked(
            model, out, precision, log, vae, lora_sources, int8_images, list(controlnets),
            depth_model, int8_unet, cuda_fp16,
        )  # fmt: skip
    log(f"peak memory: {memory.describe()}")
    return written


def _export_locked(
    model: str, out: Path, precision: str, log, vae, loras, int8_images: int = 0, controlnets=(),
    depth_model: str | None = None, int8_unet: str = "auto", cuda_fp16: bool = False,
) -> Path:  # fmt: skip
    log(f"loading {model}")
    pipe = load_pipeline(model)
    if int8_images and is_inpainting(pipe):
        raise InputError(
            "an int8 UNet is not exported for inpainting models yet: leave out --int8-images"
        )
    sources = [str(model)] * len(onnx_export.controlnets(pipe))  # the model's own ControlNets
    for source in controlnets:
        log(f"loading the ControlNet {source}")
        add_controlnet(pipe, load_controlnet(source), source)
        sources.append(source)
    if depth_model is not None and not onnx_export.has_controlnet(pipe):
        raise InputError(
            "--depth-model makes control images for a ControlNet, and this model has none: "
            "export it with  --controlnet CONTROLNET  too (a depth ControlNet, e.g. "
            "lllyasviel/control_v11f1p_sd15_depth), or leave out --depth-model"
        )
    if vae is not None:
        log(f"loading the VAE {vae}")
        replacement = load_vae(vae)
        check_vae_fits(pipe, replacement, vae)
        pipe.vae = replacement
    fused = fuse_loras(pipe, loras, log)
    remove_stale_staging(out.parent, f".{out.name}.partial-*")
    staging = make_staging_folder(out.parent, f".{out.name}.partial-{os.getpid()}-")
    try:
        feeds = {}
        if int8_images:  # first, while the whole torch pipeline is there to run
            feeds = _calibration_feeds(pipe, int8_images, log)
        components = _export_components(pipe, staging, precision, log, cuda_fp16)
        if int8_images:
            scale = onnx_export.vae_scale_factor(pipe)
            _write_int8(components, feeds, staging, int8_images, scale, log, int8_unet)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": "onnx",
            "model_family": _model_family(pipe),
            "source": str(model),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "precision": precision,
            "vae_scale_factor": onnx_export.vae_scale_factor(pipe),
            "vae_scaling_factor": float(pipe.vae.config.scaling_factor),
            "latent_channels": int(pipe.vae.config.latent_channels),
            "unet_in_channels": int(pipe.unet.config.in_channels),
            "vae": {
                "kind": onnx_export.vae_kind(pipe.vae),
                "source": vae or str(model),
                "overflows_in_fp16": _vae_overflows_in_fp16(pipe),
            },
            "loras": fused,
            "tokenizer": _write_tokenizer(pipe, staging, _first_tokenizer(pipe)),
            "scheduler": _write_scheduler(pipe, staging),
            "components": components,
            "memory": memory_model(pipe),
            "tools": _tool_versions(),
        }
        if onnx_export.is_sdxl(pipe):
            manifest.update(_xl_entries(pipe, staging, manifest["tokenizer"]))
        if onnx_export.has_controlnet(pipe):
            manifest["control"] = _control_entry(pipe, sources)
        if depth_model is not None:
            from .depth import export_depth

            components["depth"], manifest["depth"] = export_depth(
                depth_model, staging, log, cuda_fp16
            )
        fix = "this is a bug in the export; please report it"
        text = serialise(manifest, f"the manifest written for {model}", fix)
        (staging / MANIFEST).write_text(text)
        if int8_images:  # each int8 graph measured alone on the whole folder; the mix chosen
            from .int8_choice import select_int8
            from .int8_static import add_static_int8

            size = components["unet"]["variants"][INT8_VARIANT]["quantization"]["calibration"]
            select_int8(staging, manifest, feeds, size["size"], log)
            add_static_int8(staging, manifest, feeds, size["size"], log)
            text = serialise(manifest, f"the manifest written for {model}", fix)
            (staging / MANIFEST).write_text(text)
        replace_folder(staging, out)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_full(out) from None
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _calibration_feeds(pipe, images: int, log) -> dict:
    """Every component's calibration inputs: the plain img2img's, and with ControlNets also
    the ControlNet img2img's for the ControlNets and unet_control."""
    from .calibration import calibration_feeds
    from .control_calibration import control_feeds, plain_img2img

    log(f"running {images} calibration images for the int8 graphs")
    feeds = calibration_feeds(plain_img2img(pipe), images, log)
    if onnx_export.has_controlnet(pipe):
        log(f"running {images} calibration images with control for the ControlNets' int8 graphs")
        feeds.update(control_feeds(pipe, images, log))
    return feeds


def _write_int8(
    components: dict, feeds: dict, staging: Path, images: int, scale: int, log, unet="auto"
):
    """The int8 UNet (by the methods `unet` names), the ControlNets' and unet_control's (by
    the first of them) and the other components' int8 graphs written beside their exported
    graphs, each listed as its component's int8 variant."""
    from . import int8_control
    from .int8_components import candidates, write_int8_component
    from .quantize import unet_methods, write_int8_unet

    methods = unet_methods(unet)
    written = {"unet": write_int8_unet(feeds["unet"], staging, images, scale, log, methods)}
    for name in int8_control.candidates(components):
        written[name] = int8_control.write_int8_control(
            name, feeds[name], staging, images, scale, log, methods[0]
        )
    for name in candidates(components):
        written[name] = write_int8_component(name, feeds[name], staging, images, log)
    for name, (variant, files) in written.items():
        components[name].setdefault("variants", {})[INT8_VARIANT] = variant
        components[name]["files"].update(file_entries(staging, files))


def _disk_full(out: Path) -> OutputError:
    """The error for an export that ran out of disk space (its staging folder is gone)."""
    free = shutil.disk_usage(out.parent).free / 1e9
    return OutputError(
        f"the disk holding {out.parent} is full ({free:.1f} GB free after removing the partial "
        f"export): an export needs about twice the size of the model's weights free while it "
        f"writes the UNet (SDXL: about 25 GB); free some space and export again. Nothing was "
        f"written to {out}"
    )


def _export_components(pipe, staging: Path, precision: str, log, cuda_fp16: bool = False) -> dict:
    """Export, save and verify each component (`cuda_fp16`: its fp16 graph for ONNX Runtime
    CUDA too); the UNet goes last, and each torch model's weights are freed as soon as no
    later component needs them, so that SDXL's 10 GB UNet is exported and checked with little
    else in memory."""
    specs = onnx_export.component_specs(pipe)
    modules = onnx_export.torch_modules(pipe)
    names = onnx_export.component_names(pipe)
    order = sorted(names, key=lambda name: name in ("unet", onnx_export.CONTROL_UNET))
    entries = {}
    for k, name in enumerate(order):
        started = time.perf_counter()
        wanted = _component_precision(pipe, name, precision)
        why = ""
        if wanted != precision:
            why = (
                ": this VAE overflows in fp16 (its config says force_upcast, and diffusers "
                "upcasts it too); --vae madebyollin/sdxl-vae-fp16-fix is one made for fp16"
            )
        log(f"exporting {name} ({wanted}{why})")
        reference = verify.reference(pipe, name, modules[name])
        raw = onnx_export.export_component(pipe, name, modules[name], specs[name], staging / ".raw")
        release_weights(pipe, order[k + 1 :])
        dest = staging / name / "model.onnx"
        tolerance = verify.TOLERANCE[wanted]
        files = onnx_export.save_model(raw, dest, fp16=wanted == "fp16")
        shutil.rmtree(staging / ".raw")
        parity = verify.compare(reference, dest)
        parity["tolerance"] = tolerance
        log(
            f"  {name}: max abs error {parity['max_abs_error']:.3g}, "
            f"relative {parity['max_rel_error']:.3g} (limit {tolerance:g}), "
            f"{time.perf_counter() - started:.1f} s"
        )
        if not parity["max_rel_error"] <= tolerance:
            raise EngineError(
                f"{name} exported to ONNX differs from PyTorch: relative error "
                f"{parity['max_rel_error']:.3g} exceeds {tolerance:g}; no engine was written"
            )
        entries[name] = {
            "path": f"{name}/model.onnx",
            "precision": wanted,
            "files": file_entries(staging, files),
            **specs[name].io(),
            "parity": parity,
        }
        rewritten = {"onnxruntime": _write_onnxruntime_graph(reference, dest, tolerance, log)}
        if wanted == "fp32":  # (the rewrite's constants are fp32)
            rewritten[STATIC_VARIANT] = write_openvino_graph(reference, dest, tolerance, log)
        for backend, variant in rewritten.items():
            if variant is not None:
                entries[name].setdefault("variants", {})[backend] = variant
                entries[name]["files"].update(
                    file_entries(staging, [dest.parent / variant["path"]])
                )
                variant["path"] = f"{name}/{variant['path']}"
                if "data" in variant:
                    variant["data"] = [f"{name}/{rel}" for rel in variant["data"]]
        if cuda_fp16 and wanted == "fp32":
            add_cuda_fp16_graph(pipe, name, reference, dest, entries[name], staging, log)
    # The runtime checks that the tokenizer's ids fit the text encoder's embedding.
    for name in entries:
        if name.startswith("text_encoder"):
            entries[name]["vocab_size"] = int(getattr(pipe, name).config.vocab_size)
    return {name: entries[name] for name in names}


# The pipeline attribute whose weights each exported component reads.
OWNER = {"vae_encoder": "vae", "vae_decoder": "vae", "unet_control": "unet"}


def _owner(name: str) -> str:
    """The pipeline attribute of component `name` (every ControlNet: controlnet)."""
    return "controlnet" if name.startswith("controlnet") else OWNER.get(name, name)


def release_weights(pipe, remaining) -> None:
    """Free the weights of every torch model that none of the `remaining` components reads;
    configs stay, so the manifest can still be written from them."""
    needed = {_owner(name) for name in remaining}
    for name in onnx_export.component_names(pipe):
        owner = _owner(name)
        model = getattr(pipe, owner)
        if owner not in needed and model is not None and model.device.type != "meta":
            model.to("meta")
    gc.collect()


def _component_precision(pipe, name: str, precision: str) -> str:
    """The precision a component is saved in: SDXL's VAE stays fp32 where its config says it
    overflows in fp16 (force_upcast, as diffusers upcasts it), whatever was asked."""
    return "fp32" if _vae_overflows_in_fp16(pipe) and name.startswith("vae") else precision


def _vae_overflows_in_fp16(pipe) -> bool:
    """Whether diffusers would upcast this VAE: SDXL's pipeline does where force_upcast is set."""
    return bool(onnx_export.is_sdxl(pipe) and pipe.vae.config.get("force_upcast", False))


def add_cuda_fp16_graph(pipe, name: str, reference, dest: Path, entry: dict, staging, log):
    """Write NAME/model.fp16.onnx beside the fp32 graph `dest`: the graph in fp16 (float32
    inputs and outputs kept) that ONNX Runtime CUDA runs in fp16, verified against PyTorch,
    listed in `entry` as its CUDA_FP16_VARIANT; not for a VAE of `pipe` that overflows in fp16
    (`pipe` None: not a VAE)."""
    if name.startswith("vae") and _vae_overflows_in_fp16(pipe):
        log(f"  {name}: no fp16 graph for the GPU: this VAE overflows in fp16 (it runs fp32)")
        return
    started = time.perf_counter()
    half = dest.with_name(CUDA_FP16_FILE)
    files = onnx_export.save_model(dest, half, fp16=True, data_file=CUDA_FP16_FILE + "_data")
    parity = verify.compare(reference, half)
    parity["tolerance"] = tolerance = verify.TOLERANCE["fp16"]
    if not parity["max_rel_error"] <= tolerance:
        raise EngineError(
            f"{name} converted to fp16 for the GPU differs from PyTorch: relative error "
            f"{parity['max_rel_error']:.3g} exceeds {tolerance:g}; no engine was written"
        )
    log(
        f"  {name}: fp16 graph for the GPU, relative error {parity['max_rel_error']:.3g} "
        f"(limit {tolerance:g}), {time.perf_counter() - started:.1f} s"
    )
    variant = {"path": f"{name}/{half.name}", "precision": "fp16", "parity": parity}
    entry.setdefault("variants", {})[CUDA_FP16_VARIANT] = variant
    entry["files"].update(file_entries(staging, files))


def _write_onnxruntime_graph(reference, dest: Path, tolerance: float, log) -> dict | None:
    """Write NAME/model.ort.onnx beside `dest`: the graph ONNX Runtime runs on the CPU, with
    attention fused and 3x3 convolutions in Winograd form, verified against PyTorch (with
    attention fused only where the whole does not pass)."""
    variant, converted = _rewritten_graph(reference, dest, tolerance, log, True)
    if variant is None and converted:
        variant, _ = _rewritten_graph(reference, dest, tolerance, log, False)
    return variant


def _rewritten_graph(reference, dest: Path, tolerance, log, convolutions_too):
    """(the variant entry or None, how many convolutions were converted)."""
    import onnx

    graph = onnx.load(str(dest), load_external_data=False)  # the weights stay where they are
    fused_count = attention.fuse_attention(graph)
    filters = winograd.filter_bytes(graph) if convolutions_too else 0
    convolutions = winograd.rewrite_convolutions(graph) if convolutions_too else 0
    if fused_count == 0 and convolutions == 0:
        return None, 0
    fused = dest.with_name("model.ort.onnx")
    parity = verify.save_rewritten(reference, graph, fused, tolerance)
    name = reference.name
    if not fused.exists():
        log(
            f"  {name}: ONNX Runtime's rewritten graph differs from PyTorch "
            f"({parity['max_rel_error']:.3g})"
            + (
                "; trying attention fusion alone"
                if convolutions
                else "; ONNX Runtime will run the standard graph"
            )
        )
        return None, convolutions
    log(
        f"  {name}: ONNX Runtime's graph: attention blocks fused {fused_count}, convolutions in "
        f"Winograd form {convolutions}, relative error {parity['max_rel_error']:.3g}"
    )
    variant = {"path": fused.name, "fused_attention": fused_count, "parity": parity}
    if convolutions:
        variant["winograd"] = {
            "convolutions": convolutions,
            # the transformed filters ONNX Runtime computes at load, beyond the files' weights
            "extra_bytes": 3 * filters,
            "activation_factor": WINOGRAD_ACTIVATIONS.get(name, 1.0),
        }
    return variant, convolutions
