"""Images as the compatible APIs (A1111's, OpenAI's) take them: resized to the size asked for
before they go the way of /v1/img2img's, and each image's size read from its header."""

import io
import warnings

from PIL import Image, ImageOps

from ..errors import InputError
from ..media.images import decode_image
from .admission import check_pixels


def resized(
    data: bytes, size: tuple[int, int], mode: int, max_pixels: int, field: str = "init_images"
) -> bytes:
    """The image at `size`, as A1111's images.resize_image makes it with no upscaler (Lanczos):
    mode 0 stretches it, mode 1 scales it to cover and crops the middle. An image already at
    `size` is kept as sent."""
    image = decode_image(data, field, max_pixels)
    width, height = size
    if image.size == size:
        return data
    if width * height > max_pixels:
        limit = f"{max_pixels / 1e6:.1f} megapixels"
        raise InputError(f"the size asked for ({width}x{height}) is over the {limit} this server "
                         "takes: ask for a smaller size")  # fmt: skip
    if mode == 0:
        image = image.resize(size, Image.LANCZOS)
    else:
        image = _covered(image, size, "RGB")
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def _covered(image: Image.Image, size: tuple[int, int], mode: str) -> Image.Image:
    """`image` scaled to cover `size` and its middle kept (A1111's resize mode 1, to the pixel)."""
    width, height = size
    ratio, source_ratio = width / height, image.width / image.height
    cover_w = width if ratio > source_ratio else image.width * height // image.height
    cover_h = height if ratio <= source_ratio else image.height * width // image.width
    covered = image.resize((cover_w, cover_h), Image.LANCZOS)
    out = Image.new(mode, size)
    out.paste(covered, box=(width // 2 - cover_w // 2, height // 2 - cover_h // 2))
    return out


def a1111_mask(data: bytes, size: tuple[int, int], mode: int, max_pixels: int) -> Image.Image:
    """A1111's mask (white, or opaque where it has alpha, is repainted) as a grayscale image at
    `size`, resized as the image is (`resized`'s modes)."""
    if check_pixels(data, "mask", max_pixels) is None:
        raise InputError("the field 'mask' is not an image: send a PNG, white where to repaint")
    try:
        with warnings.catch_warnings(), Image.open(io.BytesIO(data)) as opened:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # (checked above)
            mask = ImageOps.exif_transpose(opened)
            if "A" in mask.getbands():  # (as A1111's create_binary_mask reads one)
                mask = mask.getchannel("A").point(lambda a: 255 if a > 128 else 0)
            mask = mask.convert("L")
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"the field 'mask' cannot be read as an image ({exc}): send a PNG, "
                         "white where to repaint") from None  # fmt: skip
    if mask.size == size:
        return mask
    if mode == 0:
        return mask.resize(size, Image.LANCZOS)
    return _covered(mask, size, "L")


def image_size(data: bytes) -> tuple[int, int]:
    """An encoded image's (width, height), from its header."""
    with Image.open(io.BytesIO(data)) as image:
        return image.size
