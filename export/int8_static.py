"""OpenVINO's int8 graph for static shapes: a kept int8 VAE graph quantized again from the
component's GroupNorm graph (openvino-static, export/openvino_graph.py).

Compiled for each call's exact shapes (--shapes static or auto), OpenVINO runs GroupNorms
written as per-channel reductions without reordering the tensor around them; the int8 graph
quantized from the exported graph keeps those reorders. So where a component's int8 graph was
kept, it is quantized again from the GroupNorm graph by the same method, with the same layers
in float and the GroupNorms' statistics in float (group_norm.FLOAT_NODES), and measured: its
speed against the int8 graph, both compiled for the calibration inputs' shapes, and the image
with it alone against fp32's, with static shapes. It is kept, as the variant --precision int8
runs with those shapes, where it is at least MIN_SPEEDUP times as fast and its image at least
MIN_PSNR_DB from fp32's (int8_choice's bounds); otherwise its file is deleted and the
component's 'int8_static_dropped' says why. Then the int8 mix is held to the bound with static
shapes as int8_choice holds it with dynamic ones (a static graph goes while the mix's image is
under it). Compiled for dynamic shapes it ran slower (the sd15 VAE decoder: 5.46 s against
4.28 s), so --shapes dynamic keeps the int8 graph.
"""

import gc
import statistics
import time
from pathlib import Path

from fastimg.backends.registry import INT8_STATIC_VARIANT, INT8_VARIANT, STATIC_VARIANT
from fastimg.engine_folder.integrity import sha256
from fastimg.errors import require

from . import int8_choice
from .calibration import Feeds
from .int8_components import METHODS, quantize_component, read_component
from .quantize import FULL_INT8, layer_errors, log_errors, save_int8, variant_paths

STATIC_INT8_FILE = "model.int8-static.xml"


def candidates(data: dict) -> list[str]:
    """The components whose int8 graph is quantized again for static shapes: those with a
    kept, calibrated int8 graph (the VAE's) and OpenVINO's GroupNorm graph."""
    return [
        name
        for name, entry in data["components"].items()
        if METHODS.get(name) == FULL_INT8
        and INT8_VARIANT in entry.get("variants", {})
        and STATIC_VARIANT in entry["variants"]
    ]


def write_static_int8(folder: Path, data: dict, name: str, feeds: Feeds, log=print) -> dict:
    """Quantize component `name`'s GroupNorm graph in `folder` like its int8 graph (the same
    calibration `feeds`, the last held out, and float layers), write it beside it and list it
    as the component's INT8_STATIC_VARIANT in the manifest `data`: that variant's entry."""
    started = time.perf_counter()
    entry = data["components"][name]
    int8 = entry["variants"][INT8_VARIANT]["quantization"]
    feeds = list(feeds)
    held_out = feeds.pop()
    source = folder / entry["variants"][STATIC_VARIANT]["path"]
    in_float = tuple(int8.get("float_layers", []))
    log(f"quantizing {name}'s GroupNorm graph to int8 ({int8['method']}), for static shapes")
    quantized = quantize_component(name, source, feeds, in_float)
    errors = layer_errors(read_component(name, source), quantized, held_out)
    files = save_int8(quantized, source, STATIC_INT8_FILE)
    del quantized
    gc.collect()
    log_errors(f"{name} (static shapes)", errors, started, log)
    quantization = {
        "method": int8["method"],
        "calibration": int8["calibration"],
        "error": errors,
        "float_layers": list(in_float),
    }
    variant = {**variant_paths(name, files), "quantization": quantization}
    entry["variants"][INT8_STATIC_VARIANT] = variant
    for path in files:
        rel = str(path.relative_to(folder))
        entry["files"][rel] = {"bytes": path.stat().st_size, "sha256": sha256(path)}
    return variant


def time_static(folder: Path, entry: dict, feed: dict) -> dict:
    """The int8 graph's and the static-shapes int8 graph's seconds on `feed`, both compiled
    for its shapes as the runtime compiles --precision int8 (WARMUP runs each, then TIMED_RUNS
    of each in turn): a Speed record, the int8 graph as its default path."""
    ov = require("openvino", "int8")
    from fastimg.backends.openvino import compile_config

    config = compile_config("int8", None, 1)
    core, requests = ov.Core(), {}
    for label in (INT8_VARIANT, INT8_STATIC_VARIANT):
        model = core.read_model(str(folder / entry["variants"][label]["path"]))
        model.reshape({name: list(value.shape) for name, value in feed.items()})
        requests[label] = core.compile_model(model, "CPU", config).create_infer_request()
    warmup, runs = int8_choice.WARMUP, int8_choice.TIMED_RUNS
    seconds = int8_choice.alternated_seconds(requests, feed, warmup, runs)
    del requests
    gc.collect()
    static, default = (statistics.median(seconds[k]) for k in (INT8_STATIC_VARIANT, INT8_VARIANT))
    return {
        "int8_seconds": static,
        "default_seconds": default,
        "speed_ratio": round(default / static, 4),
        "default_path": "openvino int8 (the int8 graph), static shapes",
        "runs": runs,
    }


def choose(speed_ratio: float, psnr_db: float) -> tuple[bool, str]:
    """Whether a static-shapes int8 graph is kept, given its speed against the int8 graph's
    and its image's PSNR against fp32, and why."""
    figures = (
        f"{speed_ratio:.2f}x the int8 graph's speed with static shapes, "
        f"image {psnr_db:.1f} dB from fp32's"
    )
    if psnr_db < int8_choice.MIN_PSNR_DB:
        return False, f"dropped: image under the {int8_choice.MIN_PSNR_DB:g} dB bound ({figures})"
    if speed_ratio < int8_choice.MIN_SPEEDUP:
        return False, f"dropped: not {int8_choice.MIN_SPEEDUP:g}x as fast ({figures})"
    return True, f"kept for static shapes: {figures}"


def add_static_int8(folder: Path, data: dict, feeds: dict[str, Feeds], size: int, log=print):
    """Write, measure and keep or drop the static-shapes int8 graph of every candidate
    component of the complete engine folder `folder` (manifest `data`; see the module's doc),
    then hold the int8 mix with them to the bound as int8_choice holds it: its image with
    static shapes recorded as data['int8']['static_image']. A graph that fails to quantize or
    run is left out (logged): the rest of the export stands."""
    names = candidates(data)
    if not names:
        return
    log(f"measuring int8 graphs for static shapes ({', '.join(names)})")
    check = int8_choice.ImageCheck(folder, size, log, shapes="static")
    try:
        for name in names:
            try:
                _measure(folder, data, name, feeds[name], check, log)
            except Exception as exc:  # an optional graph: the export does not hang on it
                entry = data["components"][name]
                variant = entry["variants"].pop(INT8_STATIC_VARIANT, None)
                if variant is not None:
                    int8_choice.remove_files(folder, entry, variant)
                for leftover in folder.glob(f"{name}/{Path(STATIC_INT8_FILE).stem}.*"):
                    leftover.unlink()
                log(f"  {name}: no int8 graph for static shapes ({type(exc).__name__}: {exc})")
            check.close()  # (compiled from a file that may be gone)
        data["int8"]["static_image"] = _mix_within_bound(check, folder, data, log)
    finally:
        check.close()


def _measure(folder: Path, data: dict, name: str, feeds: Feeds, check, log) -> None:
    """Write component `name`'s static-shapes int8 graph, measure it, keep or drop it."""
    variant = write_static_int8(folder, data, name, feeds, log)
    speed = time_static(folder, data["components"][name], feeds[-1])
    image = check.psnr(data, (name,), f"{name} int8 alone, static shapes")
    chosen, reason = choose(speed["speed_ratio"], image["psnr_db"])
    log(
        f"  {name}: static-shapes int8 {speed['int8_seconds']:.3f} s, int8 graph "
        f"{speed['default_seconds']:.3f} s; {reason}"
    )
    variant["quantization"].update(speed=speed, image=image, chosen=chosen, reason=reason)
    if not chosen:
        int8_choice.drop(folder, data, name, reason, INT8_STATIC_VARIANT)


def _static(data: dict) -> list[str]:
    components = data["components"].items()
    return [n for n, e in components if INT8_STATIC_VARIANT in e.get("variants", {})]


def _alone(data: dict, name: str) -> dict:
    return data["components"][name]["variants"][INT8_STATIC_VARIANT]["quantization"]


def _mix_within_bound(check, folder: Path, data: dict, log) -> dict:
    """The image record of the int8 mix with static shapes; while it is under the bound, the
    static graph whose image alone was the least accurate is dropped (its int8 graph stays)."""
    kept = tuple(data["int8"]["components"])
    mix = check.psnr(data, kept, "int8 mix, static shapes", ",".join(_static(data)))
    while mix["psnr_db"] < int8_choice.MIN_PSNR_DB and _static(data):
        worst = min(_static(data), key=lambda n: _alone(data, n)["image"]["psnr_db"])
        reason = (
            f"dropped: the int8 mix with it gave {mix['psnr_db']:.1f} dB with static shapes, "
            f"under {int8_choice.MIN_PSNR_DB:g}"
        )
        int8_choice.drop(folder, data, worst, reason, INT8_STATIC_VARIANT)
        log(f"  {worst}: {reason}")
        check.close()
        mix = check.psnr(data, kept, "int8 mix, static shapes", ",".join(_static(data)))
    return mix
