"""Inpainting, as StableDiffusionInpaintPipeline runs it: white in the mask is repainted, black
kept. The mask is prepared as its mask_processor does (resized to the image, grayscale,
binarized at 0.5) and brought to the latents' size as prepare_mask_latents does (nearest).
A plain (4-channel) UNet denoises everything, and after every step the kept region's latents
(the image's, noised to the next step with the call's noise) are put back; an inpainting UNet
takes [latents, mask, masked image latents] and nothing is put back.

Around that, as diffusers' docs and pipeline do: `mask_blur` blurs the mask first
(mask_processor.blur), `padding_mask_crop` transforms only the masked region's padded box at
the engine's size and pastes it back (A1111's "only masked"), `keep_unmasked` pastes the
original pixels back outside the (blurred) mask (apply_overlay, fastimg.diffusion.inpaint_area),
and `masked_content` says what the masked region starts from (fastimg.diffusion.masked_content).
"""

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from ..engine_folder.manifest import Manifest
from ..errors import InputError
from ..media import images
from ..settings import BY_NAME, CallSettings
from . import samplers, schedules
from .inpaint_area import apply_overlay, crop_region, resize_and_fill
from .masked_content import FILL, ORIGINAL, fill_latents, filled_pixels

# The largest blur radius or padding taken, in pixels (PIL refuses radii past 2**31).
MAX_MASK_PIXELS = 1 << 16
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
    # The pixels the engines transform: the image's, or with padding_mask_crop the crop's.
    image_pixels: np.ndarray | None = None
    # What an output is pasted over: (the mask, the original, the crop box or None), or None.
    overlay: tuple | None = None
    tags: tuple[tuple[str, object], ...] = ()  # mask_labels' (label, value) pairs
    content: str = ORIGINAL  # what the masked region starts from (masked_content)

    @property
    def crop(self) -> tuple[int, int, int, int] | None:
        """The box of the original that the engines transform (padding_mask_crop), or None."""
        return self.overlay and self.overlay[2]

    @property
    def label(self) -> str:
        """What an image made with this mask is labelled with (fastimg:mask)."""
        return "inverted" if self.inverted else "given"

    def labels(self) -> dict:
        """fastimg:mask and the mask settings given (fastimg:mask_blur, ...)."""
        return dict(self.tags)

    def finish(self, image: Image.Image) -> Image.Image:
        """An output as the call returns it: pasted over the original through the mask where
        the call crops or keeps the unmasked pixels, else as the engines made it."""
        if self.overlay is None:
            return image
        mask, original, crop = self.overlay
        return apply_overlay(mask, original, image, crop)


def check_settings(manifest: Manifest, settings: CallSettings) -> None:
    """Refuse an inpainting folder without a mask, mask settings without a mask or out of
    range, an empty mask file, and a mask for a UNet that cannot take one."""
    shaping = {
        "mask_invert": (settings.mask_invert, "--mask-invert"),
        "mask_blur": (settings.mask_blur, "--mask-blur PX"),
        "padding_mask_crop": (settings.padding_mask_crop, "--inpaint-area masked"),
        "keep_unmasked": (settings.keep_unmasked, "--keep-unmasked"),
        "masked_content": (settings.masked_content, "--masked-content"),
    }
    if settings.mask_image is None:
        if manifest.inpainting:
            raise InputError(
                f"the engine folder {manifest.folder} holds an inpainting UNet, which needs a "
                "mask (white: repaint, black: keep): pass mask_image (--mask FILE)"
            )
        for name, (value, option) in shaping.items():
            unset = value is None or value is False or (name == "mask_blur" and value == 0)
            if not unset:
                raise InputError(
                    f"{name} ({option}) shapes a mask, but no mask was given: pass one "
                    "(mask_image, --mask FILE) or leave it out"
                )
        return
    for name in ("mask_invert", "keep_unmasked"):
        if not isinstance(shaping[name][0], bool):
            raise InputError(f"{name} must be True or False, got {shaping[name][0]!r}")
    for name, fix in (("mask_blur", "0 for none"), ("padding_mask_crop", "e.g. 32")):
        value = shaping[name][0]
        if value is not None and not 0 <= value <= MAX_MASK_PIXELS:
            raise InputError(
                f"{name} ({BY_NAME[name].option}) is a number of pixels, 0 or more (at most "
                f"{MAX_MASK_PIXELS}), got {value}: pass {fix}"
            )
    if isinstance(settings.mask_image, str | Path):  # a batch's mask file: read once, up front
        path = Path(settings.mask_image)
        stat = path.stat() if path.is_file() else None
        version = stat and (stat.st_mtime_ns, stat.st_size)
        _check_file(str(path), version, settings.mask_invert, settings.mask_blur)
    unet = manifest.unet_in_channels
    if unet != manifest.latent_channels and not manifest.inpainting:
        raise InputError(
            f"the engine folder {manifest.folder}'s UNet takes {unet} channels, neither the "
            "latents alone nor an inpainting UNet's: it cannot take a mask"
        )


@dataclass(frozen=True)
class MaskGeometry:
    """What a mask (without padding_mask_crop) gives every image of one size, whatever its
    pixels: computed once for a stream's frames."""

    size: tuple[int, int]  # (height, width) of the images it is for
    binary: np.ndarray  # H x W, 1 = repaint
    gray: Image.Image  # the grayscale mask the output is pasted through, at the mask's size
    keep: Image.Image | None  # `gray` at the image's size (keep_unmasked), else None


def mask_geometry(settings: CallSettings, height: int, width: int) -> MaskGeometry:
    """The call's mask (padding_mask_crop unset) blurred, binarized and inverted as asked for
    an image of `height` x `width`; an InputError where it repaints nothing."""
    picture = mask_picture(_mask_source(settings), settings.mask_blur)
    invert = settings.mask_invert
    binary, gray = binarize(picture, height, width, invert), overlay_mask(picture, invert)
    keep = None
    if settings.keep_unmasked:
        keep = gray
        if keep.size != (width, height):
            keep = keep.resize((width, height), resample=Image.LANCZOS)
    if not binary.any():
        raise _empty_mask()
    return MaskGeometry((height, width), binary, gray, keep)


def _mask_source(settings: CallSettings) -> Image.Image:
    """The call's mask_image as a PIL image (a path read)."""
    source = settings.mask_image
    if isinstance(source, str | Path):
        source = images.load_image(source)
    if not isinstance(source, Image.Image):
        raise InputError(f"mask_image must be a PIL image or a path, got {type(source).__name__}")
    return source


def prepare_mask(
    settings: CallSettings,
    pixels: np.ndarray,
    factor: int,
    image: Image.Image | None = None,
    geometry: MaskGeometry | None = None,
) -> Mask | None:
    """The call's mask (None without one), read and prepared for an image of `pixels`
    (1 x 3 x H x W in [-1, 1]) whose latents are `factor` times smaller; `image` is the
    original the output is pasted over (padding_mask_crop, keep_unmasked); `geometry`: the
    mask's mask_geometry for this size, where the caller keeps it."""
    if settings.mask_image is None:
        return None
    invert, height, width = settings.mask_invert, pixels.shape[2], pixels.shape[3]
    overlay = None
    if settings.padding_mask_crop is not None:  # the masked region's box, at the engine's size
        picture = mask_picture(_mask_source(settings), settings.mask_blur)
        original = images.to_rgb(image or Image.fromarray(images.to_uint8(pixels)[0]))
        if picture.size != original.size:  # (diffusers wants them alike; fastimg resizes it)
            picture = picture.resize(original.size, resample=Image.LANCZOS)
        if not binarize(picture, picture.height, picture.width, invert).any():
            raise _empty_mask()
        gray = overlay_mask(picture, invert)
        crop = crop_region(gray, width, height, settings.padding_mask_crop)
        pixels = images.to_pixels(resize_and_fill(original.crop(crop), width, height), factor)
        region = resize_and_fill(picture.crop(crop), width, height)
        binary, fill_mask = binarize(region, height, width, invert), overlay_mask(region, invert)
        if not binary.any():
            raise _empty_mask()
        overlay = (gray, original, crop)
    else:  # (mask_geometry refuses an empty mask, once)
        if geometry is None or geometry.size != (height, width):
            geometry = mask_geometry(settings, height, width)
        binary, fill_mask = geometry.binary, geometry.gray
        if geometry.keep is not None:
            overlay = (geometry.keep, Image.fromarray(images.to_uint8(pixels)[0]), None)
    content = settings.masked_content or ORIGINAL
    if content == FILL:  # (the pixels the engines see; the overlay keeps the original's)
        pixels = filled_pixels(pixels, fill_mask, factor)
    mask = binary[None, None]
    return Mask(
        pixels=mask,
        latent=to_latent_size(mask, height // factor, width // factor),
        masked_pixels=(pixels * (mask < 0.5)).astype(np.float32),
        inverted=invert,
        image_pixels=pixels,
        overlay=overlay,
        tags=tuple(mask_labels(settings).items()),
        content=content,
    )


def mask_labels(settings: CallSettings) -> dict:
    """The fastimg:* labels of an image made with `settings`' mask (none without one):
    fastimg:mask (given, or inverted) and the mask settings given."""
    if settings.mask_image is None:
        return {}
    given = {
        "mask": "inverted" if settings.mask_invert else "given",
        "mask_blur": settings.mask_blur or None,
        "mask_padding": settings.padding_mask_crop,
        "keep_unmasked": settings.keep_unmasked or None,
        "masked_content": settings.masked_content,
    }
    return {f"fastimg:{key}": value for key, value in given.items() if value is not None}


def mask_picture(image: Image.Image, blur: float | None = None) -> Image.Image:
    """The mask as given, in a mode diffusers reads (others through RGB), Gaussian-blurred by
    `blur` pixels first where asked (diffusers' mask_processor.blur)."""
    if image.mode not in PLAIN_MODES:
        image = images.to_rgb(image)
    if blur:
        if image.mode in ("1", "P"):  # (PIL blurs neither)
            image = image.convert("L")
        image = image.filter(ImageFilter.GaussianBlur(blur))
    return image


def overlay_mask(picture: Image.Image, invert: bool) -> Image.Image:
    """The grayscale mask the output is pasted through (white: the output, black: the
    original), inverted with mask_invert."""
    gray = picture.convert("L")
    return ImageOps.invert(gray) if invert else gray


@functools.lru_cache(maxsize=8)
def _check_file(path: str, version, invert: bool, blur) -> None:
    """Refuse a mask file that is not an image or repaints nothing at its own size."""
    check_not_empty(images.load_image(path), invert, blur)


def check_not_empty(image: Image.Image, invert: bool = False, blur=None) -> None:
    """Refuse a mask that repaints nothing at its own size (after its blur and inversion)."""
    image = mask_picture(image, blur)
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
        self.contents = [m.content for m in masks]

    def start(self, z, eps, plan: schedules.Plan):
        """The first sampler state, as diffusers' prepare_latents (at strength 1 pure noise
        x init_noise_sigma, else the image's latents noised to the first step), then the
        masked image's latents, as prepare_mask_latents (one more draw of each generator).
        The latents' masked region is first filled as masked_content says (eps: the noise)."""
        z = fill_latents(z, self.mask, eps, self.contents, self.counts, self.xp)
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
