"""An int8 UNet for OpenVINO, through NNCF (hybrid quantization).

The weights of MatMuls with constant weights are compressed to int8 (their activations stay in
floating point); convolutions and the remaining activations (attention's products among them)
are quantized to int8 from statistics of real UNet inputs, which the exported pipeline itself
produces on calibration images. AMX and VNNI run int8 products at twice the bf16 rate. What
quantization cost is measured layer by layer and on the UNet's output, and recorded.
"""

import logging
import time
from pathlib import Path

import numpy as np

from fastimg.errors import require

METHOD = "hybrid-int8"
CALIBRATION_PROMPTS = (
    "a watercolor painting of a cozy house at sunset",
    "a photo of a red fox in the snow, detailed fur",
    "an oil painting of a harbour at night, moonlight",
    "a pencil sketch of a city street, crosshatching",
)
CALIBRATION_STEPS, CALIBRATION_STRENGTH, CALIBRATION_GUIDANCE = 4, 0.75, 7.5
WORST_LAYERS = 20  # the layers with the largest error, listed by name in the manifest
# The img2img call whose images int8 and fp32 are compared on at export (CFG on, two UNet
# steps), at the model's native size; recorded in the manifest with the PSNR it gave.
IDENTICAL_DB = 999.0  # recorded where the images are equal (PSNR infinite)
CHECK_JOB = {
    "prompt": CALIBRATION_PROMPTS[1],
    "strength": 0.5,
    "num_inference_steps": 4,
    "guidance_scale": 3.0,
    "seed": 0,
}
INT8_FILE = "model.int8.xml"


def calibration_feeds(pipe, images: int, log=print) -> list[dict[str, np.ndarray]]:
    """UNet inputs (by ONNX input name) that diffusers' img2img makes on `images` calibration
    images at the model's native size, with classifier-free guidance (its CFG batch); SDXL's
    text_embeds and time_ids among them."""
    import torch

    from fastimg.media.images import EXAMPLE_IMAGE, load_image

    side = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    photo = load_image(EXAMPLE_IMAGE).resize((side, side))
    variants = [photo, photo.transpose(0), photo.transpose(1), photo.rotate(90)]
    feeds: list[dict[str, np.ndarray]] = []

    def capture(module, args, kwargs):
        sample = kwargs.get("sample", args[0] if args else None)
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        batch = sample.shape[0]
        feed = {
            "sample": sample.float().numpy().copy(),
            "timestep": np.broadcast_to(
                np.asarray(timestep, dtype=np.float32).reshape(-1), (batch,)
            ).copy(),
            "encoder_hidden_states": kwargs["encoder_hidden_states"].float().numpy().copy(),
        }
        if kwargs.get("timestep_cond") is not None:
            feed["timestep_cond"] = kwargs["timestep_cond"].float().numpy().copy()
        for name, value in (kwargs.get("added_cond_kwargs") or {}).items():  # SDXL's text_time
            feed[name] = value.float().numpy().copy()
        feeds.append(feed)

    hook = pipe.unet.register_forward_pre_hook(capture, with_kwargs=True)
    pipe.set_progress_bar_config(disable=True)  # each image is logged instead
    try:
        for index in range(images):
            log(f"  calibration image {index + 1}/{images} ({side}x{side})")
            pipe(
                prompt=CALIBRATION_PROMPTS[index % len(CALIBRATION_PROMPTS)],
                image=variants[index % len(variants)],
                strength=CALIBRATION_STRENGTH,
                num_inference_steps=CALIBRATION_STEPS,
                guidance_scale=CALIBRATION_GUIDANCE,
                generator=torch.Generator("cpu").manual_seed(index),
            )
    finally:
        hook.remove()
    return feeds


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


def quantize_unet(onnx_path: Path, feeds: list[dict[str, np.ndarray]]):
    """The UNet at `onnx_path` quantized (hybrid int8) on `feeds`: an openvino.Model."""
    ov = require("openvino", "int8")
    nncf = require("nncf", "int8")
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
    )

    logging.getLogger("nncf").setLevel(logging.WARNING)  # not a line per layer it skips
    model = ov.Core().read_model(str(onnx_path))
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
    UNet's output, the int8 graph against the fp32 one on `feed`'s last row (the prompt's;
    the first, under guidance, is the negative prompt's, all zeros for SDXL without one)."""
    ov = require("openvino", "int8")
    feed = {name: array[-1:] for name, array in feed.items()}
    convolutions = [
        op.get_friendly_name() for op in reference.get_ops() if op.get_type_name() == "Convolution"
    ]
    present = {op.get_friendly_name(): op for op in quantized.get_ops()}
    wanted = set(convolutions + weighted_matmuls(reference))
    names = sorted(name for name in wanted if name in present)
    outputs = {}
    for label, model in (("int8", quantized), ("fp32", reference)):
        model = model.clone()
        ops = {op.get_friendly_name(): op for op in model.get_ops()}
        model.add_outputs([ops[name].output(0) for name in names])
        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        result = compiled(feed)
        outputs[label] = [np.asarray(result[port]) for port in compiled.outputs]
        del compiled, result
    errors = {
        name: _relative_rms(outputs["int8"][index + 1], outputs["fp32"][index + 1])
        for index, name in enumerate(names)
    }
    ranked = sorted(errors.items(), key=lambda item: item[1], reverse=True)
    values = np.array(list(errors.values())) if errors else np.zeros(1)
    return {
        "output_relative_rms_error": _relative_rms(outputs["int8"][0], outputs["fp32"][0]),
        "layers": len(errors),
        "median_relative_rms_error": float(np.median(values)),
        "max_relative_rms_error": float(values.max()),
        "worst_layers": [
            {"name": name[:200], "relative_rms_error": error}
            for name, error in ranked[:WORST_LAYERS]
        ],
    }


def _relative_rms(ours: np.ndarray, reference: np.ndarray) -> float:
    scale = float(np.sqrt(np.mean(np.square(reference, dtype=np.float64))))
    error = float(np.sqrt(np.mean(np.square(ours - reference, dtype=np.float64))))
    return error / scale if scale > 0 else error


def write_int8_unet(
    feeds: list[dict[str, np.ndarray]], staging: Path, images: int, vae_scale_factor: int, log=print
) -> tuple[dict, list[Path]]:
    """Write unet/model.int8.xml (+ .bin) beside the exported UNet, quantized on the
    `calibration_feeds` made from `images` images: its manifest variant entry (with the
    recorded error) and the files written."""
    ov = require("openvino", "int8")
    started = time.perf_counter()
    feeds = list(feeds)
    held_out = feeds.pop()  # measured on, never calibrated on
    log(f"quantizing the UNet to int8 ({METHOD}) on {len(feeds)} calibration UNet calls")
    onnx_path = staging / "unet" / "model.onnx"
    quantized = quantize_unet(onnx_path, feeds)
    errors = layer_errors(ov.Core().read_model(str(onnx_path)), quantized, held_out)
    xml = onnx_path.with_name(INT8_FILE)
    ov.save_model(quantized, str(xml), compress_to_fp16=False)
    from fastimg.atomic import public_mode

    for path in (xml, xml.with_suffix(".bin")):
        public_mode(path)
    log(
        f"  unet int8: output relative RMS error {errors['output_relative_rms_error']:.3g}, "
        f"{errors['layers']} layers (median {errors['median_relative_rms_error']:.3g}, "
        f"worst {errors['max_relative_rms_error']:.3g}), {time.perf_counter() - started:.1f} s"
    )
    variant = {
        "path": f"unet/{INT8_FILE}",
        "weights": f"unet/{xml.with_suffix('.bin').name}",
        "quantization": {
            "method": METHOD,
            "calibration": {
                "unet_calls": len(feeds),
                "images": images,
                "size": int(held_out["sample"].shape[-1]) * vae_scale_factor,
                "steps": CALIBRATION_STEPS,
                "strength": CALIBRATION_STRENGTH,
                "guidance": CALIBRATION_GUIDANCE,
            },
            "error": errors,
        },
    }
    return variant, [xml, xml.with_suffix(".bin")]


def image_error(folder: Path, size: int, log=print) -> dict:
    """The PSNR of the int8 UNet's image against fp32's, both on OpenVINO, on CHECK_JOB at
    `size` x `size` (the example photo), in the complete engine folder `folder`; what it
    compiled is removed again (it is keyed to this machine)."""
    import shutil

    from fastimg.backends.registry import describe
    from fastimg.diffusion.pipeline import Img2ImgPipeline
    from fastimg.engine_folder.manifest import load_manifest
    from fastimg.machine import cpu_summary
    from fastimg.media.images import EXAMPLE_IMAGE, load_image, psnr

    manifest = load_manifest(folder)
    photo = load_image(EXAMPLE_IMAGE).resize((size, size))
    images = {}
    for precision in ("fp32", "int8"):
        pipe = Img2ImgPipeline(manifest, backend="openvino", precision=precision)
        (images[precision],) = pipe(image=photo, **CHECK_JOB)
        del pipe
    shutil.rmtree(folder / describe("openvino").cache, ignore_errors=True)
    measured = min(psnr(images["int8"], images["fp32"]), IDENTICAL_DB)
    log(f"  unet int8: images {measured:.1f} dB from fp32's ({size}x{size}, OpenVINO)")
    return {"psnr_db": round(measured, 2), "job": {**CHECK_JOB, "size": size},
            "measured_on": cpu_summary()[:256]}  # fmt: skip
