"""Mixed precision for a VAE graph whose full int8 image falls under the bound.

A convolution-only graph loses most of its image to a few layers: the component is quantized
again with its worst layers (by layer_errors on the held-out input, measured on the full int8
graph) left in floating point, 2, then 4, 8 and 16 of them (each step doubles what is kept in
float, so a handful of attempts spans a wide range), until its image reaches the bound or its
speed falls under the bound on speed (more float layers only slow it further). The last
attempt's graph is what the usual rule keeps or drops; every attempt's figures are recorded.
"""

import time
from pathlib import Path

from fastimg.backends.registry import INT8_VARIANT
from fastimg.engine_folder.integrity import sha256
from fastimg.errors import require

from .calibration import Feeds
from .int8_components import METHODS, quantize_component
from .quantize import FULL_INT8, layer_errors, log_errors, save_int8

FLOAT_LAYER_STEPS = (2, 4, 8, 16)


def rescuable(name: str) -> bool:
    """Whether component `name`'s int8 graph can be quantized again with layers in float."""
    return METHODS.get(name) == FULL_INT8


def grow_float_layers(
    worst: list[str], attempt, min_psnr_db: float, min_speedup: float, steps=FLOAT_LAYER_STEPS
) -> list[dict]:
    """Each attempt's record: `attempt(layers)` quantizes again with `layers` (the first of
    `worst`, growing by `steps`) in float and returns its figures ({'speed', 'image'}); it
    stops at the first whose image reaches `min_psnr_db` or whose speed falls under
    `min_speedup`."""
    records = []
    for count in steps:
        layers = worst[:count]
        if records and len(layers) == len(records[-1]["float_layers"]):
            break  # no more layers to keep in float
        figures = attempt(layers)
        psnr, speed = figures["image"]["psnr_db"], figures["speed"]["speed_ratio"]
        records.append({"float_layers": layers, "psnr_db": psnr, "speed_ratio": speed})
        if psnr >= min_psnr_db or speed < min_speedup:
            break
    return records


def rescue(
    staging: Path, data: dict, name: str, feeds: Feeds, measure, first: dict,
    bounds: tuple[float, float], log=print,
) -> dict:  # fmt: skip
    """Quantize component `name` of the engine folder `staging` again with its worst layers
    in float (grow_float_layers; `measure(data, name, tag)` measures its graph alone, `first`
    is what it measured of the full int8 graph, `bounds` are (min PSNR dB, min speed ratio));
    its variant then holds the last attempt's graph, error and float layers, and every
    attempt's figures, the full int8 one first. That attempt's figures."""
    entry = data["components"][name]
    variant = entry["variants"][INT8_VARIANT]
    quantization = variant["quantization"]
    worst = [layer["name"] for layer in quantization["error"]["worst_layers"]]
    onnx_path = staging / entry["path"]
    calibration, held_out = list(feeds[:-1]), feeds[-1]
    last = {}

    def attempt(layers: list[str]) -> dict:
        ov = require("openvino", "int8")
        started = time.perf_counter()
        log(f"quantizing {name} to int8 again with its {len(layers)} worst layers in float")
        quantized = quantize_component(name, onnx_path, calibration, tuple(layers))
        errors = layer_errors(ov.Core().read_model(str(onnx_path)), quantized, held_out)
        files = save_int8(quantized, onnx_path)
        del quantized
        log_errors(name, errors, started, log)
        for path in files:
            rel = str(path.relative_to(staging))
            entry["files"][rel] = {"bytes": path.stat().st_size, "sha256": sha256(path)}
        quantization["error"], quantization["float_layers"] = errors, list(layers)
        last.update(measure(data, name, f"{len(layers)} layers in float"))
        return dict(last)

    min_psnr_db, min_speedup = bounds
    full = {"float_layers": [], "psnr_db": first["image"]["psnr_db"],
            "speed_ratio": first["speed"]["speed_ratio"]}  # fmt: skip
    quantization["attempts"] = [full, *grow_float_layers(worst, attempt, min_psnr_db, min_speedup)]
    return dict(last)
