"""A1111's "only masked" inpainting as diffusers' VaeImageProcessor does it for
`padding_mask_crop`: the masked region's box (padded, widened to the engine's aspect ratio),
the crop resized to fill the engine's size, and the result pasted back over the original
through the mask (apply_overlay, also what `keep_unmasked` does without a crop). The PIL steps
are diffusers' own (image_processor.py, Apache-2.0), so the pixels match its pipeline's.
"""

import numpy as np
from PIL import Image, ImageOps


def crop_region(mask: Image.Image, width: int, height: int, pad: int) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2): the box of the mask's non-black pixels, `pad` wider each way, then
    grown to width:height (diffusers' get_crop_region)."""
    values = np.asarray(mask.convert("L"))
    h, w = values.shape
    cols, rows = np.flatnonzero(values.any(axis=0)), np.flatnonzero(values.any(axis=1))
    left, right = (cols[0], w - 1 - cols[-1]) if len(cols) else (w, w)
    top, bottom = (rows[0], h - 1 - rows[-1]) if len(rows) else (h, h)
    x1, y1 = int(max(left - pad, 0)), int(max(top - pad, 0))
    x2, y2 = int(min(w - right + pad, w)), int(min(h - bottom + pad, h))
    if (x2 - x1) / (y2 - y1) > width / height:
        y1, y2 = _widen(y1, y2, (x2 - x1) / (width / height), mask.height)
    else:
        x1, x2 = _widen(x1, x2, (y2 - y1) * (width / height), mask.width)
    return x1, y1, x2, y2


def _widen(low: int, high: int, desired: float, limit: int) -> tuple[int, int]:
    """One side of the box grown to `desired` around its centre, shifted back inside [0, limit]."""
    diff = int(desired - (high - low))
    low -= diff // 2
    high += diff - diff // 2
    if high >= limit:
        low, high = low - (high - limit), limit
    if low < 0:
        low, high = 0, high - low
    return low, min(high, limit)


def resize_and_fill(image: Image.Image, width: int, height: int) -> Image.Image:
    """RGB width x height: the image fitted inside (aspect kept, Lanczos), the bands left over
    filled with its edge rows or columns stretched (diffusers' resize_mode 'fill')."""
    ratio, src_ratio = width / height, image.width / image.height
    src_w = width if ratio < src_ratio else image.width * height // image.height
    src_h = height if ratio >= src_ratio else image.height * width // image.width
    resized = image.resize((src_w, src_h), resample=Image.LANCZOS)
    res = Image.new("RGB", (width, height))
    res.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if ratio < src_ratio:
        fill = height // 2 - src_h // 2
        if fill > 0:
            res.paste(resized.resize((width, fill), box=(0, 0, width, 0)), box=(0, 0))
            edge = (0, resized.height, width, resized.height)
            res.paste(resized.resize((width, fill), box=edge), box=(0, fill + src_h))
    elif ratio > src_ratio:
        fill = width // 2 - src_w // 2
        if fill > 0:
            res.paste(resized.resize((fill, height), box=(0, 0, 0, height)), box=(0, 0))
            edge = (resized.width, 0, resized.width, height)
            res.paste(resized.resize((fill, height), box=edge), box=(fill + src_w, 0))
    return res


def resize_and_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    """RGB width x height: the image covering it (aspect kept, Lanczos), centred, the excess
    cut (diffusers' resize_mode 'crop')."""
    ratio, src_ratio = width / height, image.width / image.height
    src_w = width if ratio > src_ratio else image.width * height // image.height
    src_h = height if ratio <= src_ratio else image.height * width // image.width
    resized = image.resize((src_w, src_h), resample=Image.LANCZOS)
    res = Image.new("RGB", (width, height))
    res.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    return res


def apply_overlay(
    mask: Image.Image,
    original: Image.Image,
    image: Image.Image,
    crop: tuple[int, int, int, int] | None = None,
) -> Image.Image:
    """The original where the mask is black, `image` where it is white, blended between
    (diffusers' apply_overlay); with `crop`, `image` is the crop's and goes back into its box."""
    width, height = original.width, original.height
    kept = Image.new("RGBa", (width, height))
    kept.paste(original.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    kept = kept.convert("RGBA")
    if crop is not None:
        x, y, x2, y2 = crop
        base = Image.new("RGBA", (width, height))
        base.paste(resize_and_crop(image, x2 - x, y2 - y), (x, y))
        image = base.convert("RGB")
    image = image.convert("RGBA")
    image.alpha_composite(kept)
    return image.convert("RGB")
