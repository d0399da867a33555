"""int8 graphs of a folder's ControlNets and of the UNet taking their residuals (unet_control).

Both are the UNet's kind of network (a ControlNet is a copy of the UNet's encoder and middle
block), so they are quantized with the UNet's method (quantize.quantize_unet), on what they
received while diffusers' ControlNet img2img ran on the calibration images
(control_calibration), and their error is measured layer by layer on a held-out call. At
writing, that is the method --int8-unet forces, else the hybrid; where auto then keeps the
UNet's full int8 graph, each is quantized by that method too (write_candidate) and keeps the
method its own figures choose (int8_choice).
"""

import gc
import time
from pathlib import Path

from fastimg.backends.registry import INT8_VARIANT
from fastimg.engine_folder.integrity import sha256
from fastimg.media.control_images import edges

from .calibration import CALIBRATION_GUIDANCE, CALIBRATION_STEPS, CALIBRATION_STRENGTH, Feeds
from .onnx_export import CONTROL_UNET
from .quantize import (
    CANDIDATE_FILE,
    FULL_INT8,
    HYBRID_INT8,
    INT8_FILE,
    SMOOTH_QUANT_ALPHA,
    layer_errors,
    log_errors,
    quantize_unet,
    read_unet,
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
    feeds = list(feeds)
    files, errors = _quantize(name, feeds, staging, method, INT8_FILE, log)
    calibration = {
        "calls": len(feeds) - 1,
        "images": images,
        "size": int(feeds[-1]["sample"].shape[-1]) * vae_scale_factor,
        "steps": CALIBRATION_STEPS,
        "strength": CALIBRATION_STRENGTH,
        "guidance": CALIBRATION_GUIDANCE,
        "run": "diffusers' ControlNet img2img on the calibration images",
        "control_images": "the calibration image itself and its edges, in turn",
    }
    quantization = _record(method, calibration, errors)
    return {**variant_paths(name, files), "quantization": quantization}, files


def write_candidate(folder: Path, data: dict, name: str, feeds: Feeds, method: str, log=print):
    """Quantize component `name` of the engine folder `folder` (manifest `data`) by `method`
    too, on the same `feeds` as its int8 graph, into NAME/CANDIDATE_FILE: listed in its int8
    variant's 'candidates' (and its files in the component's) until one method is kept
    (int8_unet_method.keep_method)."""
    entry = data["components"][name]
    variant = entry["variants"][INT8_VARIANT]
    file_name = CANDIDATE_FILE.format(method=method)
    files, errors = _quantize(name, list(feeds), folder, method, file_name, log)
    quantization = _record(method, variant["quantization"]["calibration"], errors)
    variant["candidates"] = [{**variant_paths(name, files), "quantization": quantization}]
    for path in files:
        rel = str(path.relative_to(folder))
        entry["files"][rel] = {"bytes": path.stat().st_size, "sha256": sha256(path)}


def _record(method: str, calibration: dict, errors: dict) -> dict:
    """The manifest's quantization record of a graph quantized by `method`."""
    record = {"method": method, "calibration": calibration, "error": errors}
    if method == FULL_INT8:
        record["smooth_quant_alpha"] = SMOOTH_QUANT_ALPHA
    return record


def _quantize(
    name: str, feeds: list, folder: Path, method: str, file_name: str, log
) -> tuple[list[Path], dict]:
    """Quantize component `name` (NAME/model.onnx in `folder`) by `method` on `feeds` (the
    last held out to measure the error on) into NAME/`file_name`: the files and the errors."""
    started = time.perf_counter()
    calls, held_out = feeds[:-1], feeds[-1]
    log(f"quantizing {name} to int8 ({method}) on {len(calls)} calibration calls")
    onnx_path = folder / name / "model.onnx"
    quantized = quantize_unet(onnx_path, calls, method)
    errors = layer_errors(read_unet(onnx_path), quantized, held_out)
    files = save_int8(quantized, onnx_path, file_name)
    del quantized
    gc.collect()
    log_errors(name if method == HYBRID_INT8 else f"{name} ({method})", errors, started, log)
    return files, errors
