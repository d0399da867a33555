"""A1111's inpainting fields (StableDiffusionProcessingImg2Img, modules/processing.py) as
fastimg's mask settings, with A1111's defaults: the mask blurred by `mask_blur` (or
`mask_blur_x` and `mask_blur_y` when alike; 4 by default), "only masked" (`inpaint_full_res`,
on by default) with `inpaint_full_res_padding` as padding_mask_crop, and the original pasted
back outside the mask as A1111 always does (keep_unmasked). `inpainting_fill` 1 (original) is
what fastimg's inpainting starts from; 0 (fill, A1111's default) first fills the masked region
with the colours around it, as A1111's masking.fill; 2 (latent noise) and 3 (latent nothing)
are refused by name.
"""

import io

from PIL import Image, ImageFilter, ImageOps

from ..errors import InputError

A1111_BLUR = 4  # StableDiffusionProcessingImg2Img's mask_blur_x and mask_blur_y
FILLS = {0: "fill", 1: "original"}  # inpainting_fill values fastimg runs
# masking.fill's passes: (blur radius, how many times the blurred layer is laid on)
FILL_PASSES = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1))


def mask_settings(given: dict) -> tuple[dict, bool]:
    """The mask call settings (mask_blur, padding_mask_crop, keep_unmasked) of an A1111
    request's fields (`given`: its non-null fields), and whether the masked region is filled
    first (inpainting_fill 0)."""
    blur = given.get("mask_blur")
    if blur is None:
        x, y = (given.get(key, A1111_BLUR) for key in ("mask_blur_x", "mask_blur_y"))
        if x != y:
            raise InputError(
                f"mask_blur_x ({x!r}) and mask_blur_y ({y!r}) differ: fastimg blurs a mask alike "
                "both ways; send mask_blur, or the same mask_blur_x and mask_blur_y"
            )
        blur = x
    blur = _pixels(blur, "mask_blur")
    padding = None
    if given.get("inpaint_full_res", True):
        padding = _pixels(given.get("inpaint_full_res_padding", 0), "inpaint_full_res_padding")
    fill = given.get("inpainting_fill", 0)
    if fill not in FILLS or isinstance(fill, bool):
        raise InputError(
            f"the field 'inpainting_fill' ({fill!r}) is one fastimg cannot honour: it runs 1 "
            "(original) and 0 (fill), not 2 (latent noise) or 3 (latent nothing); send 0 or 1"
        )
    call = {"mask_blur": blur, "padding_mask_crop": padding, "keep_unmasked": True}
    return call, fill == 0


def _pixels(value, key: str) -> int:
    """A whole number of pixels, 0 or more, or InputError naming `key`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"the field {key!r} ({value!r}) must be a whole number of pixels, 0 or "
                         "more")  # fmt: skip
    return value


def filled(data: bytes, mask: Image.Image, blur: int, invert: bool) -> bytes:
    """The image (`data`, at the mask's size) with what the mask repaints filled from the
    colours around it (A1111's masking.fill under the blurred mask); PNG bytes."""
    with Image.open(io.BytesIO(data)) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    mask = ImageOps.invert(mask.convert("L")) if invert else mask.convert("L")
    if blur:
        mask = mask.filter(ImageFilter.GaussianBlur(blur))
    out = fill(image, mask)
    encoded = io.BytesIO()
    out.save(encoded, format="PNG", compress_level=1)
    return encoded.getvalue()


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
