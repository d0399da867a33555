"""ControlNet, as StableDiffusionControlNetImg2ImgPipeline runs it: the control image prepared
as its prepare_control_image does (RGB, the init image's size, 0..1, doubled under CFG), and at
each step the ControlNet's residuals, scaled by controlnet_conditioning_scale inside its
control_guidance_start..end window (controlnet_keep), fed to the UNet that takes them. A step
whose scales are all 0 runs the plain UNet (the residuals would all be zero). A control_preprocess
(media.control_images: canny, scribble) makes the control image first, at the init image's size;
with one and no control image, the init image is made into the control (as A1111's ControlNet
does in img2img).

Several ControlNets (diffusers' MultiControlNetModel): control_image is a list, one image per
ControlNet in the folder's order (fewer leave the last ControlNets out: they do not run); a
scale, start or end is one value for all or a list, one per ControlNet; each ControlNet runs at
its own scale x keep and their residuals are summed in order, as MultiControlNetModel.forward
does. control_preprocess is likewise one preprocessor for all or a list, one per ControlNet
(None: its image as given); a list longer than the control images runs the ControlNets past
them on the init image, each made by its own preprocessor (canny and scribble of each frame).
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..engine_folder.manifest import Manifest
from ..errors import EngineError, InputError
from ..media import control_images, images
from ..settings import AS_GIVEN, BY_NAME, CallSettings
from . import depth
from .inpaint_area import resize_and_fill

# The control settings, by diffusers' name, and their defaults.
CONTROL_SETTINGS = ("controlnet_conditioning_scale", "control_guidance_start",
                    "control_guidance_end")  # fmt: skip


# What a ControlNet takes of the UNet's feeds (SDXL's: its added text_embeds and time_ids too).
CONTROLNET_INPUTS = ("sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids")


@dataclass(frozen=True)
class Control:
    """One call's control: per ControlNet that runs (in order), its image as pixels
    (1 x 3 x H x W, 0..1) and its scale, start and end."""

    pixels: tuple[np.ndarray, ...]
    scale: tuple[float, ...]
    start: tuple[float, ...]
    end: tuple[float, ...]
    preprocessor: tuple[str | None, ...] = (None,)

    @property
    def key(self) -> tuple:
        """What calls batched together must share."""
        return (self.scale, self.start, self.end)

    def labels(self) -> dict:
        """The fastimg:* labels of an image it steered."""
        count = len(self.pixels)
        return control_labels(self.preprocessor, self.scale, self.start, self.end, count)


def model_label(manifest: Manifest, count: int = 1) -> dict:
    """The fastimg:control_model label: the name of the ControlNet (its source's, as the
    folder's model_name is; its component's where the manifest names no source), a list of
    the first `count` ones' where several ran."""
    names = []
    for entry in manifest.control["controlnets"][:count]:
        name = Path(str(entry.get("source") or entry["component"]))
        names.append(name.stem if name.suffix in (".safetensors", ".ckpt") else name.name)
    return {"fastimg:control_model": names[0] if len(names) == 1 else names}


def _one_or_list(values: tuple) -> float | list[float]:
    """One ControlNet's value as a number, several ControlNets' as a list."""
    return float(values[0]) if len(values) == 1 else [float(v) for v in values]


def _preprocessor_label(preprocessor) -> str | list[str]:
    """The preprocessor label: one name ('none': as given), or one per ControlNet."""
    names = [p or AS_GIVEN for p in _as_tuple(preprocessor)]
    return names[0] if len(set(names)) == 1 else names


def control_labels(preprocessor, scale, start, end, count: int = 1) -> dict:
    """The fastimg:* labels of an image `count` ControlNets steered (preprocessor, scale,
    start and end: one value for all or one each; media.labels writes them into the A1111
    parameters as its ControlNet extension does)."""
    return {
        "fastimg:control_preprocess": _preprocessor_label(preprocessor),
        "fastimg:control_scale": _one_or_list(per_controlnet(scale, count, "control_scale")),
        "fastimg:control_start": _one_or_list(per_controlnet(start, count, "control_start")),
        "fastimg:control_end": _one_or_list(per_controlnet(end, count, "control_end")),
    }


def _as_tuple(value) -> tuple:
    """One value or a list of values as a tuple."""
    return tuple(value) if isinstance(value, list | tuple) else (value,)


def control_images_of(settings: CallSettings) -> tuple:
    """The call's control images, in ControlNet order (() for none)."""
    image = settings.control_image
    return () if image is None else _as_tuple(image)


def preprocessors_of(settings: CallSettings) -> tuple:
    """The call's preprocessors as given: () for none, else one for all or one per ControlNet
    (None or 'none': as given)."""
    given = _as_tuple(settings.control_preprocess)
    if given == (None,):
        return ()
    return tuple(None if p == AS_GIVEN else p for p in given)


def per_controlnet(value, count: int, key: str) -> tuple[float, ...]:
    """A scale, start or end for each of `count` ControlNets: one value (or a list of one)
    for all, else one per control image."""
    values = tuple(value) if isinstance(value, list | tuple) else (value,)
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise InputError(
            f"{key} has {len(values)} values for {count} control image"
            f"{'s' * (count != 1)}: give one value for all, or one per control image, in "
            "ControlNet order"
        )
    return values


def controlnets_used(settings: CallSettings) -> int:
    """How many ControlNets a call runs: one per control image, or one per preprocessor of a
    longer list (one for a preprocessor alone)."""
    return max(len(control_images_of(settings)), len(preprocessors_of(settings)))


def check_settings(manifest: Manifest, settings: CallSettings) -> None:
    """Refuse a control image for a folder without a ControlNet, control settings without a
    control image, and a window that ends before it starts (as diffusers' check_inputs)."""
    given = [name for name in CONTROL_SETTINGS
             if getattr(settings, name) != BY_NAME[name].default]  # fmt: skip
    if settings.control_image is None and not any(preprocessors_of(settings)):
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
    names = [c["component"] for c in manifest.control["controlnets"]]
    count = controlnets_used(settings)
    if count > len(names):
        what = ("control images" if count == len(control_images_of(settings))
                else "control preprocessors")  # fmt: skip
        raise InputError(
            f"{count} {what} were given, but the engine folder {manifest.folder} has "
            f"{len(names)} ControlNet{'s' * (len(names) > 1)} ({', '.join(names)}): give at most "
            f"{len(names)}, one per ControlNet in that order (or export more with "
            "fastimg export MODEL --controlnet A --controlnet B)"
        )
    for name in per_controlnet(preprocessors_of(settings) or (None,), count, "control_preprocess"):
        control_images.check_available(name)
        if name == "depth":
            depth.check_available(manifest)
    per_controlnet(settings.controlnet_conditioning_scale, count, "control_scale")  # (its length)
    starts = per_controlnet(settings.control_guidance_start, count, "control_start")
    ends = per_controlnet(settings.control_guidance_end, count, "control_end")
    for start, end in zip(starts, ends, strict=True):
        if start >= end:
            raise InputError(
                f"control_guidance_start ({start}) must be below control_guidance_end ({end})"
            )


def prepare_control(
    settings: CallSettings,
    height: int,
    width: int,
    init_image: Image.Image | None = None,
    engines=None,
    crop: tuple[int, int, int, int] | None = None,
) -> Control | None:
    """The call's control (None without a control image or preprocessor), its images read and
    prepared as diffusers' prepare_control_image does, at the init image's `height` x `width`
    pixels, then made by their control_preprocess (a ControlNet past the control images given
    takes `init_image`); `engines` (an EngineSet) runs the depth model of preprocessor depth.
    With `crop` (an inpainting call's "only masked" box in `init_image`), each control image is
    cut to that box and fills height x width, as the init image is."""
    given = control_images_of(settings)
    count = controlnets_used(settings)
    if not given and (init_image is None or not any(preprocessors_of(settings))):
        return None
    makers = per_controlnet(preprocessors_of(settings) or (None,), count, "control_preprocess")
    sources = given + (init_image,) * (count - len(given))
    frame = crop and (init_image.size, crop)
    pixels = tuple(_pixels(image, height, width, maker, engines, frame)
                   for image, maker in zip(sources, makers, strict=True))  # fmt: skip
    return Control(
        pixels,
        per_controlnet(settings.controlnet_conditioning_scale, count, "control_scale"),
        per_controlnet(settings.control_guidance_start, count, "control_start"),
        per_controlnet(settings.control_guidance_end, count, "control_end"),
        makers,
    )


def _pixels(
    image, height: int, width: int, preprocessor: str | None, engines, frame=None
) -> np.ndarray:
    """One control image read, resized to `height` x `width` (`frame`: (the original's size,
    a box of it) to cut first, as diffusers' control_image_processor with crops_coords) and
    made by `preprocessor`, as 1 x 3 x H x W pixels in 0..1."""
    if isinstance(image, str | Path):
        image = images.load_image(image)
    if not isinstance(image, Image.Image):
        raise InputError(f"control_image must be a PIL image or a path, got {type(image).__name__}")
    image = images.to_rgb(image)
    if frame is not None:  # (a control image of another size is brought to the original's)
        size, box = frame
        image = image if image.size == size else image.resize(size, resample=Image.LANCZOS)
        image = resize_and_fill(image.crop(box), width, height)
    elif image.size != (width, height):
        image = image.resize((width, height), resample=Image.LANCZOS)
    if preprocessor == "depth":
        image = depth.depth_image(image, engines)
    else:
        image = control_images.preprocess(image, preprocessor)
    pixels = (np.asarray(image, dtype=np.float32) / np.float32(255.0)).transpose(2, 0, 1)[None]
    return pixels.copy()


def keep(steps: int, start: float, end: float) -> list[float]:
    """diffusers' controlnet_keep: 1.0 for the steps inside the start..end window, else 0.0."""
    return [1.0 - float(i / steps < start or (i + 1) / steps > end) for i in range(steps)]


class ControlRun:
    """The ControlNets of one batch: per step, their summed residuals for images
    j .. j + count - 1 (the calls of a batch share their scales and windows: Control.key)."""

    def __init__(self, engines, manifest: Manifest, controls: list, counts: list[int], steps: int):
        control, first = manifest.control, controls[0]
        names = [c["component"] for c in control["controlnets"]][: len(first.pixels)]
        missing = [n for n in (*names, control["unet"]) if n not in engines.sessions]
        if missing:
            raise EngineError(
                f"the {engines.backend} backend has not loaded {', '.join(missing)} (engines "
                "built before the folder had them): rebuild them (fastimg build FOLDER --rebuild) "
                "or run with --backend onnxruntime or openvino"
            )
        xp = engines.xp
        self.controlnets = [engines.sessions[name] for name in names]
        self.unet = engines.sessions[control["unet"]]
        self.rows = []  # per ControlNet, its control image's rows: one per image of the batch
        for k in range(len(names)):
            rows = [np.repeat(c.pixels[k], n, 0) for c, n in zip(controls, counts, strict=True)]
            self.rows.append(xp.asarray(np.concatenate(rows)))
        windows = [keep(steps, s, e) for s, e in zip(first.start, first.end, strict=True)]
        # per step, each ControlNet's scale x controlnet_keep (diffusers' cond_scale)
        self.scales = [[scale * kept[i] for scale, kept in zip(first.scale, windows, strict=True)]
                       for i in range(steps)]  # fmt: skip
        self.xp, self.latent_channels = xp, manifest.latent_channels

    def step(self, feeds: dict, i: int, j: int, count: int, cfg: bool, plain):
        """The UNet session to run at step i, with the ControlNets' summed residuals added to
        `feeds` (the plain UNet where every scale of the step is 0)."""
        if not any(self.scales[i]):
            return plain
        inputs = {name: feeds[name] for name in CONTROLNET_INPUTS if name in feeds}
        # (an inpainting UNet takes [latents, mask, masked image]; a ControlNet the latents)
        inputs["sample"] = inputs["sample"][:, : self.latent_channels]
        summed = None
        for net, all_rows, scale in zip(self.controlnets, self.rows, self.scales[i], strict=True):
            if scale == 0:  # (its residuals are zeros: diffusers adds them, changing nothing)
                continue
            rows = all_rows[j : j + count]
            cond = self.xp.concatenate([rows, rows]) if cfg else rows
            scale_feed = self.xp.asarray(np.array([scale], dtype=np.float32))
            out = net.run({**inputs, "controlnet_cond": cond, "conditioning_scale": scale_feed})
            summed = out if summed is None else {k: summed[k] + v for k, v in out.items()}
        feeds.update(summed)
        return self.unet
