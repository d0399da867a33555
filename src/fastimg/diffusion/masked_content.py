"""What the masked region starts from (`masked_content`, A1111's "masked content",
inpainting_fill 0-3): `original` (the image, diffusers' inpainting), `fill` (the region
painted from the colours around it first, A1111's masking.fill under the blurred mask),
`latent_noise` (its start latents replaced by noise) and `latent_nothing` (by zeros), as
A1111's StableDiffusionProcessingImg2Img.init does to init_latent before img2img noises it by
the strength.

`latent_noise`'s noise is each image's own starting noise: the first draw of its seed's
generator, the noise that then noises the start (A1111 draws both from the same seeds with
create_random_tensors). No draw is added, so every later draw is that of a call without it.
At strength 1 the start is noise alone (as in diffusers), so neither latent fill changes it.
"""

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from ..media import images
from ..settings import MASKED_CONTENTS

ORIGINAL, FILL, LATENT_NOISE, LATENT_NOTHING = MASKED_CONTENTS
LATENT_FILLS = (LATENT_NOISE, LATENT_NOTHING)
# masking.fill's passes: (blur radius, how many times the blurred layer is laid on)
FILL_PASSES = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1))


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's masking.fill: the image where the mask is black, and where it is white the image
    around it blurred ever less, laid over itself (premultiplied alpha), so colours flow in."""
    kept = Image.new("RGBa", image.size)
    kept.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    out = Image.new("RGBA", image.size)
    for radius, repeats in FILL_PASSES:
        blurred = kept.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            out.alpha_composite(blurred)
    return out.convert("RGB")


def filled_pixels(pixels: np.ndarray, mask: Image.Image, factor: int) -> np.ndarray:
    """The image's pixels (1 x 3 x H x W in [-1, 1]) with `fill` under the grayscale `mask`
    (white: repainted; resized to the pixels' size where it differs)."""
    height, width = pixels.shape[2], pixels.shape[3]
    if mask.size != (width, height):
        mask = mask.resize((width, height), resample=Image.LANCZOS)
    return images.to_pixels(fill(Image.fromarray(images.to_uint8(pixels)[0]), mask), factor)


def fill_latents(latents, mask, noise, contents: list[str], counts: list[int], xp=np):
    """The start latents (one row per image) with the masked region (`mask`: 1 repaints, one
    row per image) replaced where each request's content (`contents`, `counts` images each) is
    latent_noise (by `noise`, the rows' starting noise) or latent_nothing (by zeros)."""
    if not any(content in LATENT_FILLS for content in contents):
        return latents
    cleared = _per_row([content in LATENT_FILLS for content in contents], counts, xp) * mask
    noised = _per_row([content == LATENT_NOISE for content in contents], counts, xp) * mask
    return latents * (np.float32(1.0) - cleared) + noise * noised


def _per_row(flags: list[bool], counts: list[int], xp):
    """N x 1 x 1 x 1 of 1.0 for each image of a request flagged, else 0.0."""
    rows = np.repeat(np.asarray(flags, np.float32), counts)
    return xp.asarray(rows.reshape(-1, 1, 1, 1))
