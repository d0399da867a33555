"""Mixed precision for a VAE graph whose full int8 image falls under the bound.

The component is quantized again with its worst layers left in floating point, 2, then 4, 8
and 16 of them (each step doubles what is kept in float, so a handful of attempts spans a wide
range), until its image reaches the bound or its speed falls under the bound on speed (more
float layers only slow it further). The last attempt's graph is what the usual rule keeps or
drops; every attempt's figures are recorded.

Worst means the most error added, measured on the held-out input: a layer's output error
(layer_errors' relative RMS against fp32) less the error of the activation it takes, before
its quantizer. layer_errors' own ranking is cumulative (each layer carries every error above
it), so it names the last layers of the graph, which in a VAE decoder are the largest and
slowest, whether or not their own quantization costs much.
"""

import time
from pathlib import Path

import numpy as np

from fastimg.backends.registry import INT8_VARIANT
from fastimg.engine_folder.integrity import sha256
from fastimg.errors import require

from .calibration import Feeds
from .int8_components import METHODS, quantize_component, read_component
from .quantize import FULL_INT8, layer_errors, log_errors, relative_rms, save_int8, weighted_matmuls

FLOAT_LAYER_STEPS = (2, 4, 8, 16)
LAYERS_PER_RUN = 8  # layers whose activations one measuring run holds (memory)
QUANTIZERS = ("FakeQuantize", "Convert")  # what stands between an activation and its layer


def added_errors(reference, quantized, feed: dict) -> list[tuple[str, float]]:
    """(name, error added) of each convolution and weighted MatMul of the int8 openvino.Model
    `quantized` against the fp32 `reference` on `feed`, the most first: the relative RMS error
    of its output less that of the activation it takes, before its quantizer."""
    ov = require("openvino", "int8")
    weighted = set(weighted_matmuls(reference))
    present = {op.get_friendly_name() for op in quantized.get_ops()}
    names = [
        op.get_friendly_name()
        for op in reference.get_ops()
        if (op.get_type_name() == "Convolution" or op.get_friendly_name() in weighted)
        and op.get_friendly_name() in present
    ]
    added = {}
    for start in range(0, len(names), LAYERS_PER_RUN):
        chunk = names[start : start + LAYERS_PER_RUN]
        values = {}
        for label, model in (("int8", quantized), ("fp32", reference)):
            model = model.clone()
            ops = {op.get_friendly_name(): op for op in model.get_ops()}
            ports, where = {}, []  # a port taken by two layers is added once
            for name in chunk:
                source = ops[name].input_value(0)
                while source.get_node().get_type_name() in QUANTIZERS:
                    source = source.get_node().input_value(0)
                pair = []
                for port in (ops[name].output(0), source):
                    key = (port.get_node().get_friendly_name(), port.get_index())
                    pair.append(ports.setdefault(key, (len(ports), port))[0])
                where.append(pair)
            model.add_outputs([port for _, port in ports.values()])
            compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            result = compiled(feed)
            outputs = [np.asarray(result[port]) for port in compiled.outputs[1:]]
            values[label] = [(outputs[out], outputs[taken]) for out, taken in where]
            del compiled, result, outputs
        for index, name in enumerate(chunk):
            (ours, ours_taken), (fp32, fp32_taken) = values["int8"][index], values["fp32"][index]
            added[name] = relative_rms(ours, fp32) - relative_rms(ours_taken, fp32_taken)
    return sorted(added.items(), key=lambda item: item[1], reverse=True)


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
    onnx_path = staging / entry["path"]
    calibration, held_out = list(feeds[:-1]), feeds[-1]
    ov = require("openvino", "int8")
    reference = read_component(name, onnx_path)
    int8 = ov.Core().read_model(str(staging / variant["path"]))
    ranked = added_errors(reference, int8, {k: v[-1:] for k, v in held_out.items()})
    worst = [layer for layer, _ in ranked[: max(FLOAT_LAYER_STEPS)]]
    del reference, int8
    last = {}

    def attempt(layers: list[str]) -> dict:
        started = time.perf_counter()
        log(f"quantizing {name} to int8 again with its {len(layers)} worst layers in float")
        quantized = quantize_component(name, onnx_path, calibration, tuple(layers))
        errors = layer_errors(read_component(name, onnx_path), quantized, held_out)
        files = save_int8(quantized, onnx_path)
        del quantized
        log_errors(name, errors, started, log)
        for path in files:
            rel = str(path.relative_to(staging))
            entry["files"][rel] = {"bytes": path.stat().st_size, "sha256": sha256(path)}
        quantization["error"], quantization["float_layers"] = errors, list(layers)
        last.update(measure(data, name, f"{len(layers)} layers in float"))
        return dict(last)

    full = {"float_layers": [], "psnr_db": first["image"]["psnr_db"],
            "speed_ratio": first["speed"]["speed_ratio"]}  # fmt: skip
    steps = FLOAT_LAYER_STEPS
    quantization["attempts"] = [full, *grow_float_layers(worst, attempt, *bounds, steps)]
    return dict(last)
