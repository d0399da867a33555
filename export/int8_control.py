"""int8 graphs of a folder's ControlNets and of the UNet taking their residuals (unet_control).

Both are the UNet's kind of network (a ControlNet is a copy of the UNet's encoder and middle
block), so they are quantized with the UNet's method (quantize.quantize_unet: the one --int8-unet
forces, else the hybrid, as they are not measured method against method), on what they
received while diffusers' ControlNet img2img ran on the calibration images
(control_calibration), and their error is measured layer by layer on a held-out call.
"""

import time
from pathlib import Path

from .calibration import CALIBRATION_GUIDANCE, CALIBRATION_STEPS, CALIBRATION_STRENGTH, Feeds
from .control_calibration import edges
from .onnx_export import CONTROL_UNET
from .quantize import (
    HYBRID_INT8,
    layer_errors,
    log_errors,
    quantize_unet,
    save_int8,
    variant_paths,
)


def uses_control(name: str) -> bool:
    """Whether component `name` runs only with a control image (a ControlNet, unet_control)."""
    return name.startswith("controlnet") or name == CONTROL_UNET


def candidates(components) -> list[str]:
    """The ControlNet components and unet_control, in the manifest's order."""
    return [name for name in components if uses_control(name)]


def check_call(data: dict, photo) -> tuple[dict, dict]:
    """The control image arguments of the export's image check on `photo` for the folder of
    manifest `data` (the photo's edges for every ControlNet, as a canny map looks), and what
    its record's job says of them."""
    hint = edges(photo)
    count = len(data["control"]["controlnets"])
    call = {"control_image": hint if count == 1 else [hint] * count}
    return call, {"control_image": "the input image's edges (Pillow FIND_EDGES, thresholded)"}


def write_int8_control(
    name: str,
    feeds: Feeds,
    staging: Path,
    images: int,
    vae_scale_factor: int,
    log=print,
    method: str = HYBRID_INT8,
) -> tuple[dict, list[Path]]:
    """Write NAME/model.int8.xml (+ .bin) beside ControlNet component `name` (or
    unet_control), quantized by `method` (quantize.quantize_unet's) on its `feeds` (the last
    held out to measure the error on): its manifest variant entry and the files written."""
    from fastimg.errors import require

    ov = require("openvino", "int8")
    started = time.perf_counter()
    feeds = list(feeds)
    held_out = feeds.pop()
    log(f"quantizing {name} to int8 ({method}) on {len(feeds)} calibration calls")
    onnx_path = staging / name / "model.onnx"
    quantized = quantize_unet(onnx_path, feeds, method)
    errors = layer_errors(ov.Core().read_model(str(onnx_path)), quantized, held_out)
    files = save_int8(quantized, onnx_path)
    log_errors(name, errors, started, log)
    calibration = {
        "calls": len(feeds),
        "images": images,
        "size": int(held_out["sample"].shape[-1]) * vae_scale_factor,
        "steps": CALIBRATION_STEPS,
        "strength": CALIBRATION_STRENGTH,
        "guidance": CALIBRATION_GUIDANCE,
        "run": "diffusers' ControlNet img2img on the calibration images",
        "control_images": "the calibration image itself and its edges, in turn",
    }
    quantization = {"method": method, "calibration": calibration, "error": errors}
    return {**variant_paths(name, files), "quantization": quantization}, files
