"""Real inputs of the ControlNets and of the UNet taking their residuals, for int8 calibration.

A pipeline with ControlNets runs diffusers' ControlNet img2img (StableDiffusion(XL)ControlNet
Img2ImgPipeline, built from the same components) on the calibration images while hooks record
what each ControlNet receives and what the UNet receives with the residuals, by the exported
graphs' input names (`controlnet`, ..., `unet_control`). The control image alternates between
the calibration image itself and its edges (white lines on black, as a canny map looks, made
with Pillow): ControlNets take dense maps (depth, segmentation, tile: the whole 0..1 range,
smooth) or sparse binary line maps (canny, scribble, lineart), and their first convolutions'
activation ranges differ between the two, so the calibration sees both.
"""

import numpy as np

from fastimg.media.control_images import edges

from .calibration import Feeds, run_calibration, unet_feed
from .onnx_export import CONTROL_UNET, controlnets, residual_names


def control_image(image, index: int):
    """The control image of calibration image `index`: the image itself (even), its edges
    (odd)."""
    return image if index % 2 == 0 else edges(image)


def plain_img2img(pipe):
    """diffusers' img2img pipeline (no ControlNet) on the components of `pipe`, which may be
    a ControlNet pipeline: what the UNet's own calibration runs."""
    import diffusers

    if "ControlNet" not in type(pipe).__name__:
        return pipe
    if hasattr(pipe, "text_encoder_2"):
        parts = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet",
                 "scheduler")  # fmt: skip
        return diffusers.StableDiffusionXLImg2ImgPipeline(
            **{name: getattr(pipe, name) for name in parts},
            requires_aesthetics_score=bool(pipe.config.requires_aesthetics_score),
            force_zeros_for_empty_prompt=bool(pipe.config.force_zeros_for_empty_prompt),
            add_watermarker=False,
        )
    parts = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
    return diffusers.StableDiffusionImg2ImgPipeline(
        **{name: getattr(pipe, name) for name in parts},
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def controlnet_img2img(pipe):
    """diffusers' ControlNet img2img pipeline on the components of `pipe` (a plain img2img
    pipeline given ControlNets by the export, or a ControlNet pipeline already)."""
    import diffusers

    if "ControlNet" in type(pipe).__name__:
        return pipe
    if hasattr(pipe, "text_encoder_2"):
        parts = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet",
                 "controlnet", "scheduler")  # fmt: skip
        return diffusers.StableDiffusionXLControlNetImg2ImgPipeline(
            **{name: getattr(pipe, name) for name in parts},
            requires_aesthetics_score=bool(pipe.config.requires_aesthetics_score),
            force_zeros_for_empty_prompt=bool(pipe.config.force_zeros_for_empty_prompt),
            add_watermarker=False,
        )
    parts = ("vae", "text_encoder", "tokenizer", "unet", "controlnet", "scheduler")
    return diffusers.StableDiffusionControlNetImg2ImgPipeline(
        **{name: getattr(pipe, name) for name in parts},
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def control_feeds(pipe, images: int, log=print) -> dict[str, Feeds]:
    """Each ControlNet's and the residual-taking UNet's inputs (by ONNX input name) that
    diffusers' ControlNet img2img makes on `images` calibration images, with the settings
    and prompts of the UNet's own calibration: {'controlnet': [...], ..., 'unet_control'}."""
    nets = controlnets(pipe)
    control = controlnet_img2img(pipe)
    feeds: dict[str, Feeds] = {name: [] for name, _ in nets}
    feeds[CONTROL_UNET] = []
    undo = [_hook_controlnet(net, feeds[name]) for name, net in nets]
    undo.append(_hook_unet_control(pipe.unet, residual_names(pipe.unet.config), feeds))

    def control_argument(image, index: int) -> dict:
        hint = control_image(image, index)
        return {"control_image": hint if len(nets) == 1 else [hint] * len(nets)}

    run_calibration(control, images, undo, log, " with control", control_argument)
    return feeds


def _array(tensor) -> np.ndarray:
    return tensor.detach().float().numpy().copy()


def _hook_controlnet(net, feeds: Feeds):
    def capture(module, args, kwargs):
        names = ("sample", "timestep", "encoder_hidden_states", "controlnet_cond")
        values = dict(zip(names, args, strict=False)) | {k: kwargs[k] for k in names if k in kwargs}
        feed = unet_feed(values["sample"], values["timestep"], values["encoder_hidden_states"])
        feed["controlnet_cond"] = _array(values["controlnet_cond"])
        scale = kwargs.get("conditioning_scale", args[4] if len(args) > 4 else 1.0)
        feed["conditioning_scale"] = np.asarray([float(scale)], dtype=np.float32)
        for name, value in (kwargs.get("added_cond_kwargs") or {}).items():  # SDXL's
            feed[name] = _array(value)
        feeds.append(feed)

    return net.register_forward_pre_hook(capture, with_kwargs=True).remove


def _hook_unet_control(unet, residuals: list[str], feeds: dict[str, Feeds]):
    def capture(module, args, kwargs):
        sample = kwargs.get("sample", args[0] if args else None)
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        feed = unet_feed(sample, timestep, kwargs["encoder_hidden_states"])
        for name, value in (kwargs.get("added_cond_kwargs") or {}).items():  # SDXL's
            feed[name] = _array(value)
        down = kwargs.get("down_block_additional_residuals")
        mid = kwargs.get("mid_block_additional_residual")
        if down is None or mid is None:  # a step outside the control window: not this graph
            return
        for name, value in zip(residuals, (*down, mid), strict=True):
            feed[name] = _array(value)
        feeds[CONTROL_UNET].append(feed)

    return unet.register_forward_pre_hook(capture, with_kwargs=True).remove
