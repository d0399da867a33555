"""ControlNet, as StableDiffusionControlNetImg2ImgPipeline runs it: the control image prepared
as its prepare_control_image does (RGB, the init image's size, 0..1, doubled under CFG), and at
each step the ControlNet's residuals, scaled by controlnet_conditioning_scale inside its
control_guidance_start..end window (controlnet_keep), fed to the UNet that takes them. A step
whose scale is 0 runs the plain UNet (the residuals would all be zero). A control_preprocess
(media.control_images: canny, scribble) makes the control image first, at the init image's size;
with one and no control image, the init image is made into the control (as A1111's ControlNet
does in img2img).
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..engine_folder.manifest import Manifest
from ..errors import EngineError, InputError
from ..media import control_images, images
from ..settings import BY_NAME, CallSettings

# The control settings, by diffusers' name, and their defaults.
CONTROL_SETTINGS = ("controlnet_conditioning_scale", "control_guidance_start",
                    "control_guidance_end")  # fmt: skip


@dataclass(frozen=True)
class Control:
    """One call's control: its image as pixels (1 x 3 x H x W, 0..1) and its settings."""

    pixels: np.ndarray
    scale: float
    start: float
    end: float
    preprocessor: str | None = None

    @property
    def key(self) -> tuple:
        """What calls batched together must share."""
        return (self.scale, self.start, self.end)

    def labels(self) -> dict:
        """The fastimg:* labels of an image it steered."""
        return control_labels(self.preprocessor, self.scale, self.start, self.end)


def model_label(manifest: Manifest) -> dict:
    """The fastimg:control_model label: the ControlNet's name (its source's, as the folder's
    model_name is; its component's where the manifest names no source)."""
    first = manifest.control["controlnets"][0]
    name = Path(str(first.get("source") or first["component"]))
    return {"fastimg:control_model": name.stem if name.suffix in (".safetensors", ".ckpt")
            else name.name}  # fmt: skip


def control_labels(preprocessor: str | None, scale: float, start: float, end: float) -> dict:
    """The fastimg:* labels of an image a ControlNet steered (media.labels writes them into the
    A1111 parameters as its ControlNet extension does)."""
    return {
        "fastimg:control_preprocess": preprocessor or "none",
        "fastimg:control_scale": float(scale),
        "fastimg:control_start": float(start),
        "fastimg:control_end": float(end),
    }


def check_settings(manifest: Manifest, settings: CallSettings) -> None:
    """Refuse a control image for a folder without a ControlNet, control settings without a
    control image, and a window that ends before it starts (as diffusers' check_inputs)."""
    given = [name for name in CONTROL_SETTINGS
             if getattr(settings, name) != BY_NAME[name].default]  # fmt: skip
    if settings.control_image is None and settings.control_preprocess is None:
        if given:
            raise InputError(
                f"{', '.join(BY_NAME[n].key for n in given)} steer a ControlNet, but no control "
                "image was given: pass control_image (--control-image) or control_preprocess "
                "(--control-preprocess, to make one from the input image), or leave them out"
            )
        return
    if not manifest.control:
        what = "a control image" if settings.control_image is not None else "control_preprocess"
        raise InputError(
            f"{what} was given, but the engine folder {manifest.folder} has no "
            "ControlNet: export the model with  fastimg export MODEL --controlnet CONTROLNET  "
            f"(or leave out {what})"
        )
    control_images.check_available(settings.control_preprocess)
    if settings.control_guidance_start >= settings.control_guidance_end:
        raise InputError(
            f"control_guidance_start ({settings.control_guidance_start}) must be below "
            f"control_guidance_end ({settings.control_guidance_end})"
        )


def prepare_control(
    settings: CallSettings, height: int, width: int, init_image: Image.Image | None = None
) -> Control | None:
    """The call's control (None without a control image or preprocessor), its image read and
    prepared as diffusers' prepare_control_image does, at the init image's `height` x `width`
    pixels, then made by the call's control_preprocess (from `init_image` without an image)."""
    image = settings.control_image
    preprocessor = settings.control_preprocess
    if image is None:
        if preprocessor is None or init_image is None:
            return None
        image = init_image
    if isinstance(image, str | Path):
        image = images.load_image(image)
    if not isinstance(image, Image.Image):
        raise InputError(f"control_image must be a PIL image or a path, got {type(image).__name__}")
    image = images.to_rgb(image)
    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.LANCZOS)
    image = control_images.preprocess(image, preprocessor)
    pixels = (np.asarray(image, dtype=np.float32) / np.float32(255.0)).transpose(2, 0, 1)[None]
    return Control(
        pixels.copy(),
        settings.controlnet_conditioning_scale,
        settings.control_guidance_start,
        settings.control_guidance_end,
        preprocessor,
    )


def keep(steps: int, start: float, end: float) -> list[float]:
    """diffusers' controlnet_keep: 1.0 for the steps inside the start..end window, else 0.0."""
    return [1.0 - float(i / steps < start or (i + 1) / steps > end) for i in range(steps)]


class ControlRun:
    """The ControlNet of one batch: per step, its residuals for images j .. j + count - 1."""

    def __init__(self, engines, manifest: Manifest, controls: list, counts: list[int], steps: int):
        control = manifest.control
        names = [c["component"] for c in control["controlnets"]]
        missing = [n for n in (*names, control["unet"]) if n not in engines.sessions]
        if missing:
            raise EngineError(
                f"the {engines.backend} backend has not loaded {', '.join(missing)}: it does "
                "not run ControlNets yet; run with --backend onnxruntime or openvino"
            )
        xp, first = engines.xp, controls[0]
        self.controlnet = engines.sessions[names[0]]
        self.unet = engines.sessions[control["unet"]]
        rows = [np.repeat(c.pixels, n, axis=0) for c, n in zip(controls, counts, strict=True)]
        self.rows = xp.asarray(np.concatenate(rows))
        self.scales = [first.scale * k for k in keep(steps, first.start, first.end)]
        self.xp = xp

    def step(self, feeds: dict, i: int, j: int, count: int, cfg: bool, plain):
        """The UNet session to run at step i, with the ControlNet's residuals added to `feeds`
        (the plain UNet where the step's scale is 0)."""
        scale = self.scales[i]
        if scale == 0:
            return plain
        rows = self.rows[j : j + count]
        cond = self.xp.concatenate([rows, rows]) if cfg else rows
        scale_feed = self.xp.asarray(np.array([scale], dtype=np.float32))
        inputs = {name: feeds[name] for name in ("sample", "timestep", "encoder_hidden_states")}
        feeds.update(self.controlnet.run({**inputs, "controlnet_cond": cond,
                                          "conditioning_scale": scale_feed}))  # fmt: skip
        return self.unet
