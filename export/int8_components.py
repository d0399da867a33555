"""int8 beyond the UNet: the VAE's encoder and decoder fully int8, the text encoders' weights.

The VAE is convolutions on large images (most of an sd15 job's time on the CPU): NNCF quantizes
every convolution's weights and activations to int8 from statistics of the images the VAE
encoder received and the latents the decoder received while the pipeline being exported ran
on the calibration images. The text encoder is MatMuls on 77 tokens, bound by reading its
weights: they are compressed to int8 (data-free), its products stay in floating point. Each
graph's error is measured layer by layer against the fp32 graph on a held-out input.
"""

import logging
import time
from pathlib import Path

from fastimg.errors import EngineError, require

from . import group_norm
from .calibration import Feeds
from .quantize import FULL_INT8, layer_errors, log_errors, save_int8, variant_paths

# FULL_INT8 here: convolutions' weights and activations quantized (NNCF, MIXED preset)
INT8_WEIGHTS = "int8-weights"  # MatMul weights compressed to int8, asymmetric, data-free
METHODS = {
    "vae_encoder": FULL_INT8,
    "vae_decoder": FULL_INT8,
    "text_encoder": INT8_WEIGHTS,
    "text_encoder_2": INT8_WEIGHTS,
}
WHAT_CALIBRATES = {
    "vae_encoder": "the images the pipeline's VAE encoder received",
    "vae_decoder": "the latents the pipeline's VAE decoder received",
}


def candidates(components) -> list[str]:
    """The components besides the UNet that --int8 quantizes, in the manifest's order."""
    return [name for name in components if name in METHODS]


def read_component(name: str, path: Path):
    """Component `name`'s graph at `path` as it is quantized and measured: a VAE decoder's
    with each convolution of an upsampled image run per output phase (openvino_upsampling), as
    the runtime compiles float graphs for static shapes, which it cannot do to an int8 graph
    (its constants folded first; a graph without upsampling is left as read)."""
    ov = require("openvino", "int8")
    from fastimg.backends.openvino_rewrites import folded
    from fastimg.backends.openvino_upsampling import fold_upsampling

    model = ov.Core().read_model(str(path))
    upsampled = any(op.get_type_name() == "Interpolate" for op in model.get_ops())
    if METHODS.get(name) == FULL_INT8 and upsampled and folded(model):
        fold_upsampling(model)
    return model


def quantize_component(name: str, onnx_path: Path, feeds: Feeds, in_float: tuple[str, ...] = ()):
    """Component `name`'s graph at `onnx_path` quantized by its METHODS entry: an
    openvino.Model (the VAE's calibrated on `feeds`, the layers named in `in_float` left in
    floating point)."""
    return quantize_read(name, read_component(name, onnx_path), feeds, in_float, onnx_path)


def quantize_read(name: str, model, feeds: Feeds, in_float: tuple[str, ...] = (), path=None):
    """quantize_component on a graph already read (from `path`, named in errors)."""
    nncf = require("nncf", "int8")
    logging.getLogger("nncf").setLevel(logging.WARNING)  # not a line per layer it skips
    # (NNCF's own check is off: the GroupNorm pattern matches nothing in an exported graph)
    missing = set(in_float) - {op.get_friendly_name() for op in model.get_ops()}
    if missing:
        raise EngineError(
            f"{path or name} has no layer named {', '.join(sorted(missing))} to leave in float; "
            "this is a bug in the export, please report it"
        )
    if METHODS[name] == INT8_WEIGHTS:
        return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    return nncf.quantize(
        model,
        nncf.Dataset(feeds),
        preset=nncf.QuantizationPreset.MIXED,  # asymmetric activations: SiLU's are one-sided
        subset_size=len(feeds),
        ignored_scope=nncf.IgnoredScope(
            names=list(in_float), patterns=[group_norm.FLOAT_NODES], validate=False
        ),
    )


def write_int8_component(
    name: str, feeds: Feeds, staging: Path, images: int, log=print
) -> tuple[dict, list[Path]]:
    """Write NAME/model.int8.xml (+ .bin) beside component `name`'s exported graph, from its
    calibration `feeds` (one per calibration image; the last held out to measure the error
    on): its manifest variant entry and the files written."""
    started = time.perf_counter()
    feeds = list(feeds)
    held_out = feeds.pop()
    method = METHODS[name]
    calibrated = feeds if method == FULL_INT8 else []
    how = f"on {len(calibrated)} calibration inputs" if calibrated else "(weights, data-free)"
    log(f"quantizing {name} to int8 ({method}) {how}")
    onnx_path = staging / name / "model.onnx"
    quantized = quantize_component(name, onnx_path, calibrated)
    errors = layer_errors(read_component(name, onnx_path), quantized, held_out)
    files = save_int8(quantized, onnx_path)
    log_errors(name, errors, started, log)
    shape = next(iter(held_out.values())).shape
    calibration = {
        "inputs": WHAT_CALIBRATES.get(name, "none: weights only, compressed without data"),
        "count": len(calibrated),
        "images": images,
        "shape": [int(d) for d in shape],
    }
    quantization = {"method": method, "calibration": calibration, "error": errors}
    return {**variant_paths(name, files), "quantization": quantization}, files
