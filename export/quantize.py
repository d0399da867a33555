"""An int8 UNet for OpenVINO, through NNCF, by one of two methods.

hybrid-int8: the weights of MatMuls with constant weights are compressed to int8 (their
activations stay in floating point); convolutions and the remaining activations (attention's
products among them) are quantized to int8 from statistics of real UNet inputs, which the
exported pipeline itself produces on calibration images.
full-int8: the same, with the weighted MatMuls' activations quantized too, after SmoothQuant
moves their activations' outlier channels into the weights (NNCF's, alpha SMOOTH_QUANT_ALPHA):
every product then runs on int8 inputs, which AMX and VNNI run at twice the bf16 rate.
What quantization cost is measured layer by layer and on the UNet's output, and recorded.
"""

import gc
import logging
import time
from pathlib import Path

import numpy as np

from fastimg.errors import require

from .calibration import CALIBRATION_GUIDANCE, CALIBRATION_STEPS, CALIBRATION_STRENGTH

HYBRID_INT8, FULL_INT8 = "hybrid-int8", "full-int8"
UNET_METHODS = {"hybrid": HYBRID_INT8, "full": FULL_INT8}  # export --int8-unet, besides auto
# NNCF's default for MatMuls under ModelType.TRANSFORMER (0.95 moves most of an outlier
# channel's range into the weights); convolutions are not smoothed, as in the hybrid.
SMOOTH_QUANT_ALPHA = 0.95
WORST_LAYERS = 20  # the layers with the largest error, listed by name in the manifest
INT8_FILE = "model.int8.xml"
CANDIDATE_FILE = "model.{method}.xml"  # another method's graph, written to be measured


def unet_methods(choice: str) -> tuple[str, ...]:
    """The UNet int8 methods written for export --int8-unet `choice` ('auto': both, the
    hybrid first)."""
    return (HYBRID_INT8, FULL_INT8) if choice == "auto" else (UNET_METHODS[choice],)


def weighted_matmuls(model) -> list[str]:
    """Names of the MatMuls one of whose inputs is a constant (a weight, maybe converted)."""
    names = []
    for op in model.get_ops():
        if op.get_type_name() != "MatMul":
            continue
        for value in op.input_values():
            node = value.get_node()
            while node.get_type_name() in ("Convert", "Transpose", "Reshape") and node.inputs():
                node = node.input_value(0).get_node()
            if node.get_type_name() == "Constant":
                names.append(op.get_friendly_name())
                break
    return names


def read_unet(onnx_path: Path):
    """The UNet (or ControlNet) graph at `onnx_path` as it is quantized and measured: each
    sliced projection (GEGLU's) split into a MatMul per slice, as the runtime splits the float
    graphs it compiles (openvino_rewrites), which it cannot do to an int8 graph. (Full int8's
    SmoothQuant then smooths the two halves' shared input by one scale, as it does any MatMuls
    reading one input, where it smoothed the whole projection before.) Its upsamplings stay as
    exported: quantized from their per-phase form (openvino_upsampling), sd15's full int8 UNet
    was 1.005x as fast (bench/results, epyc-2026-12-06e)."""
    ov = require("openvino", "int8")
    from fastimg.backends.openvino_rewrites import split_projections

    model = ov.Core().read_model(str(onnx_path))
    split_projections(model)
    return model


def quantize_unet(onnx_path: Path, feeds: list[dict[str, np.ndarray]], method: str = HYBRID_INT8):
    """The UNet at `onnx_path` quantized by `method` on `feeds`: an openvino.Model."""
    return quantize_model(read_unet(onnx_path), feeds, method)


def quantize_model(model, feeds: list[dict[str, np.ndarray]], method: str = HYBRID_INT8):
    """A UNet-like openvino.Model quantized by `method` on `feeds`: an openvino.Model."""
    nncf = require("nncf", "int8")
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
    )

    logging.getLogger("nncf").setLevel(logging.WARNING)  # not a line per layer it skips
    if method == FULL_INT8:
        return nncf.quantize(
            model,
            nncf.Dataset(feeds),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(feeds),
            advanced_parameters=AdvancedQuantizationParameters(
                smooth_quant_alphas=AdvancedSmoothQuantParameters(
                    convolution=-1, matmul=SMOOTH_QUANT_ALPHA
                )
            ),
        )
    weighted = weighted_matmuls(model)
    compressed = nncf.compress_weights(
        model,
        mode=nncf.CompressWeightsMode.INT8_ASYM,
        ignored_scope=nncf.IgnoredScope(types=["Convolution"], validate=False),
    )
    return nncf.quantize(
        compressed,
        nncf.Dataset(feeds),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(feeds),
        ignored_scope=nncf.IgnoredScope(names=weighted, validate=False),
        advanced_parameters=AdvancedQuantizationParameters(
            smooth_quant_alphas=AdvancedSmoothQuantParameters(convolution=-1, matmul=-1)
        ),
    )


def layer_errors(reference, quantized, feed: dict[str, np.ndarray]) -> dict:
    """Relative RMS error of every convolution's and weighted MatMul's output, and of the
    graph's output (the worst of its outputs: a ControlNet has one per residual), the int8
    graph against the fp32 one on `feed`'s last row (the prompt's; the first, under
    guidance, is the negative prompt's, all zeros for SDXL without one). The layers' errors
    come from the graph with each layer made an output too, which OpenVINO runs otherwise
    than the graph itself (the sd15 VAE decoder's output error 0.31 there, 0.11 as it runs):
    the output's error is the int8 graph's own, compiled as it is."""
    ov = require("openvino", "int8")
    feed = {name: array[-1:] for name, array in feed.items()}
    convolutions = [
        op.get_friendly_name() for op in reference.get_ops() if op.get_type_name() == "Convolution"
    ]
    present = {op.get_friendly_name(): op for op in quantized.get_ops()}
    wanted = set(convolutions + weighted_matmuls(reference))
    names = sorted(name for name in wanted if name in present)
    own = len(reference.outputs)  # the graph's outputs come first, then the layers'
    outputs, layers = {}, {}
    for label, model in (("int8", quantized), ("fp32", reference)):
        model = model.clone()
        ops = {op.get_friendly_name(): op for op in model.get_ops()}
        added = model.add_outputs([ops[name].output(0) for name in names])
        # A layer whose output is already the graph's (SDXL's pooled text_embeds) is not added.
        layers[label] = [next(k for k, out in enumerate(model.outputs) if out == p) for p in added]
        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        result = compiled(feed)
        outputs[label] = [np.asarray(result[port]) for port in compiled.outputs]
        del compiled, result
    errors = {
        name: relative_rms(outputs["int8"][layers["int8"][i]], outputs["fp32"][layers["fp32"][i]])
        for i, name in enumerate(names)
    }
    compiled = ov.Core().compile_model(quantized, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled(feed)
    ran = [np.asarray(result[port]) for port in compiled.outputs]
    del compiled, result
    output_errors = [relative_rms(ran[k], outputs["fp32"][k]) for k in range(own)]
    ranked = sorted(errors.items(), key=lambda item: item[1], reverse=True)
    values = np.array(list(errors.values())) if errors else np.zeros(1)
    return {
        "output_relative_rms_error": max(output_errors),
        "layers": len(errors),
        "median_relative_rms_error": float(np.median(values)),
        "max_relative_rms_error": float(values.max()),
        "worst_layers": [
            {"name": name[:200], "relative_rms_error": error}
            for name, error in ranked[:WORST_LAYERS]
        ],
    }


def relative_rms(ours: np.ndarray, reference: np.ndarray) -> float:
    """The RMS of `ours - reference` over the RMS of `reference`."""
    scale = float(np.sqrt(np.mean(np.square(reference, dtype=np.float64))))
    error = float(np.sqrt(np.mean(np.square(ours - reference, dtype=np.float64))))
    return error / scale if scale > 0 else error


def write_int8_unet(
    feeds: list[dict[str, np.ndarray]],
    staging: Path,
    images: int,
    vae_scale_factor: int,
    log=print,
    methods: tuple[str, ...] = (HYBRID_INT8,),
) -> tuple[dict, list[Path]]:
    """Write the UNet quantized by each of `methods` beside the exported UNet, calibrated on
    the `calibration_feeds` made from `images` images: the first's manifest variant entry
    (unet/model.int8.xml, with the recorded error; the others' entries, in files of their own,
    listed in its 'candidates' until the export has measured and chosen one) and the files."""
    feeds = list(feeds)
    held_out = feeds.pop()  # measured on, never calibrated on
    onnx_path = staging / "unet" / "model.onnx"
    calibration = {
        "unet_calls": len(feeds),
        "images": images,
        "size": int(held_out["sample"].shape[-1]) * vae_scale_factor,
        "steps": CALIBRATION_STEPS,
        "strength": CALIBRATION_STRENGTH,
        "guidance": CALIBRATION_GUIDANCE,
    }
    variants, files = [], []
    for index, method in enumerate(methods):
        started = time.perf_counter()
        log(f"quantizing the UNet to int8 ({method}) on {len(feeds)} calibration UNet calls")
        quantized = quantize_unet(onnx_path, feeds, method)
        errors = layer_errors(read_unet(onnx_path), quantized, held_out)
        name = INT8_FILE if index == 0 else CANDIDATE_FILE.format(method=method)
        written = save_int8(quantized, onnx_path, name)
        del quantized
        gc.collect()  # the next method's graph is as big
        log_errors(f"unet ({method})", errors, started, log)
        quantization = {"method": method, "calibration": calibration, "error": errors}
        if method == FULL_INT8:
            quantization["smooth_quant_alpha"] = SMOOTH_QUANT_ALPHA
        variants.append({**variant_paths("unet", written), "quantization": quantization})
        files += written
    variant = variants[0]
    if len(variants) > 1:
        variant["candidates"] = variants[1:]
    return variant, files


def save_int8(quantized, onnx_path: Path, name: str = INT8_FILE) -> list[Path]:
    """Save an int8 openvino.Model as `name` (+ .bin) beside `onnx_path`: the files."""
    ov = require("openvino", "int8")
    from fastimg.atomic import public_mode

    xml = onnx_path.with_name(name)
    ov.save_model(quantized, str(xml), compress_to_fp16=False)
    files = [xml, xml.with_suffix(".bin")]
    for path in files:
        public_mode(path)
    return files


def variant_paths(name: str, files: list[Path]) -> dict:
    """The manifest variant's path and weights of component `name`'s int8 `files`."""
    return {"path": f"{name}/{files[0].name}", "weights": f"{name}/{files[1].name}"}


def log_errors(name: str, errors: dict, started: float, log=print) -> None:
    """One line of what quantizing component `name` cost, and how long it took."""
    log(
        f"  {name} int8: output relative RMS error {errors['output_relative_rms_error']:.3g}, "
        f"{errors['layers']} layers (median {errors['median_relative_rms_error']:.3g}, "
        f"worst {errors['max_relative_rms_error']:.3g}), {time.perf_counter() - started:.1f} s"
    )
