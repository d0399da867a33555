"""A1111's inpainting fields (StableDiffusionProcessingImg2Img, modules/processing.py) as
fastimg's mask settings, with A1111's defaults: the mask blurred by `mask_blur` (or
`mask_blur_x` and `mask_blur_y` when alike; 4 by default), "only masked" (`inpaint_full_res`,
on by default) with `inpaint_full_res_padding` as padding_mask_crop, the original pasted back
outside the mask as A1111 always does (keep_unmasked), and `inpainting_fill` 0 (fill, A1111's
default), 1 (original), 2 (latent noise) and 3 (latent nothing) as masked_content
(fastimg.diffusion.masked_content).
"""

from ..errors import InputError

A1111_BLUR = 4  # StableDiffusionProcessingImg2Img's mask_blur_x and mask_blur_y
# inpainting_fill -> masked_content
FILLS = {0: "fill", 1: "original", 2: "latent_noise", 3: "latent_nothing"}


def mask_settings(given: dict) -> dict:
    """The mask call settings (mask_blur, padding_mask_crop, keep_unmasked, masked_content) of
    an A1111 request's fields (`given`: its non-null fields)."""
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
    if isinstance(fill, bool) or fill not in FILLS:
        raise InputError(
            f"the field 'inpainting_fill' ({fill!r}) is not one of A1111's: send 0 (fill), "
            "1 (original), 2 (latent noise) or 3 (latent nothing)"
        )
    return {"mask_blur": blur, "padding_mask_crop": padding, "keep_unmasked": True,
            "masked_content": FILLS[fill]}  # fmt: skip


def _pixels(value, key: str) -> int:
    """A whole number of pixels, 0 or more, or InputError naming `key`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"the field {key!r} ({value!r}) must be a whole number of pixels, 0 or "
                         "more")  # fmt: skip
    return value
