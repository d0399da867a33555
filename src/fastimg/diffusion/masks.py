"""Inpainting, as StableDiffusionInpaintPipeline runs it: white in the mask is repainted, black
kept. The mask is prepared as its mask_processor does (resized to the image, grayscale,
binarized at 0.5) and brought to the latents' size as prepare_mask_latents does (nearest).
A plain (4-channel) UNet denoises everything, and after every step the kept region's latents
(the image's, noised to the next step with the call's noise) are put back; an inpainting UNet
takes [latents, mask, masked image latents] and nothing is put back.
"""

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..engine_folder.manifest import Manifest
from ..errors import InputError
from ..media import images
from ..settings import CallSettings
from . import samplers, schedules

# PIL modes convert("L") reads as diffusers does; others (16-bit, float, CMYK) go through RGB.
PLAIN_MODES = ("1", "L", "LA", "P", "RGB", "RGBA")


@dataclass(frozen=True)
class Mask:
    """One call's mask: binarized at the image's size (1 x 1 x H x W, 1 = repaint), at the
    latents' size, and the image with the repainted region blacked out (masked_image)."""

    pixels: np.ndarray
    latent: np.ndarray
    masked_pixels: np.ndarray
    inverted: bool = False

    @property
    def label(self) -> str:
        """What an image made with this mask is labelled with (fastimg:mask)."""
        return "inverted" if self.inverted else "given"


def check_settings(manifest: Manifest, settings: CallSettings) -> None:
    """Refuse an inpainting folder without a mask, and masks where fastimg cannot match
    diffusers yet (SDXL, an LCM-distilled UNet, a ControlNet)."""
    if settings.mask_image is None:
        if manifest.inpainting:
            raise InputError(
                f"the engine folder {manifest.folder} holds an inpainting UNet, which needs a "
                "mask (white: repaint, black: keep): pass mask_image (--mask FILE)"
            )
        if settings.mask_invert:
            raise InputError("mask_invert inverts a mask, but no mask was given: pass one")
        return
    if not isinstance(settings.mask_invert, bool):
        raise InputError(f"mask_invert must be True or False, got {settings.mask_invert!r}")
    if isinstance(settings.mask_image, str | Path):  # a batch's mask file: read once, up front
        path = Path(settings.mask_image)
        stat = path.stat() if path.is_file() else None
        _check_file(str(path), stat and (stat.st_mtime_ns, stat.st_size), settings.mask_invert)
    unet = manifest.unet_in_channels
    if unet != manifest.latent_channels and not manifest.inpainting:
        raise InputError(
            f"the engine folder {manifest.folder}'s UNet takes {unet} channels, neither the "
            "latents alone nor an inpainting UNet's: it cannot take a mask"
        )
    refused = [
        (manifest.text_conditioning, "an SDXL folder"),
        ("timestep_cond" in manifest.components["unet"]["inputs"], "an LCM-distilled UNet"),
        (settings.control_image is not None, "a control image"),
    ]
    for found, what in refused:
        if found:
            raise InputError(
                f"a mask was given with {what}: fastimg inpaints with SD 1.x/2.x models "
                f"without a ControlNet for now; leave out the mask (or {what})"
            )


def prepare_mask(settings: CallSettings, pixels: np.ndarray, factor: int) -> Mask | None:
    """The call's mask (None without one), read and prepared for an image of `pixels`
    (1 x 3 x H x W in [-1, 1]) whose latents are `factor` times smaller."""
    image = settings.mask_image
    if image is None:
        return None
    if isinstance(image, str | Path):
        image = images.load_image(image)
    if not isinstance(image, Image.Image):
        raise InputError(f"mask_image must be a PIL image or a path, got {type(image).__name__}")
    height, width = pixels.shape[2], pixels.shape[3]
    binary = binarize(image, height, width, settings.mask_invert)
    if not binary.any():
        raise _empty_mask()
    mask = binary[None, None]
    return Mask(
        pixels=mask,
        latent=to_latent_size(mask, height // factor, width // factor),
        masked_pixels=(pixels * (mask < 0.5)).astype(np.float32),
        inverted=settings.mask_invert,
    )


@functools.lru_cache(maxsize=8)
def _check_file(path: str, version, invert: bool) -> None:
    """Refuse a mask file that is not an image or repaints nothing at its own size."""
    image = images.load_image(path)
    if not binarize(image, image.height, image.width, invert).any():
        raise _empty_mask()


def _empty_mask() -> InputError:
    return InputError(
        "the mask is empty (all black after binarizing at 50%): there is nothing to "
        "repaint; paint white where the image should change (or pass --mask-invert)"
    )


def binarize(image: Image.Image, height: int, width: int, invert: bool = False) -> np.ndarray:
    """float32 H x W of 0 and 1 (1: repaint), as diffusers' mask_processor: the mask resized
    (Lanczos) to the image's size, then grayscale, then 1 where it is at least 0.5."""
    if image.mode not in PLAIN_MODES:
        image = images.to_rgb(image)
    gray = image.resize((width, height), resample=Image.LANCZOS).convert("L")
    values = np.asarray(gray, dtype=np.float32) / np.float32(255.0)
    if invert:
        values = np.float32(1.0) - values
    return (values >= 0.5).astype(np.float32)


def to_latent_size(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """torch.nn.functional.interpolate(mask, size) in its default 'nearest' mode."""
    rows = np.minimum(np.floor(np.arange(height) * (mask.shape[2] / height)), mask.shape[2] - 1)
    cols = np.minimum(np.floor(np.arange(width) * (mask.shape[3] / width)), mask.shape[3] - 1)
    return mask[:, :, rows.astype(np.int64)][:, :, :, cols.astype(np.int64)].copy()


def encodes_image(manifest: Manifest, strength: float) -> bool:
    """Whether diffusers encodes the init image: an inpainting UNet at strength 1 starts from
    noise alone and never does (nor draws its generator for it)."""
    return not (manifest.inpainting and strength == 1.0)


class MaskRun:
    """The masks of one batch in the sampler loop: the first state, the UNet's input, and the
    kept region put back after each step."""

    def __init__(self, manifest: Manifest, masks: list, counts: list[int], strength: float,
                 xp, encode, rng):  # fmt: skip
        self.inpainting, self.kl = manifest.inpainting, manifest.vae_kind == "kl"
        self.counts, self.strength, self.xp = counts, strength, xp
        self.mask = xp.asarray(_rows([m.latent for m in masks], counts))
        self.masked_pixels = np.concatenate([m.masked_pixels for m in masks])
        self.encode, self.rng = encode, rng  # the masked image's encoder, one row a request

    def start(self, z, eps, plan: schedules.Plan):
        """The first sampler state, as diffusers' prepare_latents (at strength 1 pure noise
        x init_noise_sigma, else the image's latents noised to the first step), then the
        masked image's latents, as prepare_mask_latents (one more draw of each generator)."""
        self.z, self.eps, self.plan = z, eps, plan
        xp = self.xp
        if self.inpainting:
            self.masked = xp.repeat(self.encode(self.masked_pixels), self.counts, axis=0)
        elif self.kl:  # diffusers encodes it for nothing; its draw keeps the generators in step
            self.rng.randn((len(self.counts), *z.shape[1:]))
        if self.strength == 1.0:
            return eps * np.float32(plan.init_noise_sigma)
        return samplers.add_noise(z, eps, plan)

    def unet_input(self, x_in, j: int):
        """The UNet's sample for images j .. j + len(x_in) - 1: the latents, and for an
        inpainting UNet the mask and the masked image's latents beside them."""
        if not self.inpainting:
            return x_in
        n = len(x_in)
        return self.xp.concatenate([x_in, self.mask[j : j + n], self.masked[j : j + n]], axis=1)

    def after_step(self, x, i: int):
        """A plain UNet's state after step i with the kept region's latents put back (the
        image's, noised to step i + 1; clean after the last step)."""
        if self.inpainting:
            return x
        kept = self.z
        if i < self.plan.steps - 1:
            a, b = samplers.noise_scales_at(self.plan, i + 1)
            kept = np.float32(a) * self.z + np.float32(b) * self.eps
        return (np.float32(1.0) - self.mask) * kept + self.mask * x


def _rows(arrays: list[np.ndarray], counts: list[int]) -> np.ndarray:
    """Each request's array repeated once per image, stacked."""
    return np.concatenate([np.repeat(a, n, axis=0) for a, n in zip(arrays, counts, strict=True)])
