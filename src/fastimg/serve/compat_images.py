"""Images as the compatible APIs (A1111's, OpenAI's) take them: resized to the size asked for
before they go the way of /v1/img2img's, and each image's size read from its header."""

import io

from PIL import Image

from ..errors import InputError
from ..media.images import decode_image


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
    else:  # (A1111's arithmetic, to the pixel)
        ratio, source_ratio = width / height, image.width / image.height
        cover_w = width if ratio > source_ratio else image.width * height // image.height
        cover_h = height if ratio <= source_ratio else image.height * width // image.width
        covered = image.resize((cover_w, cover_h), Image.LANCZOS)
        image = Image.new("RGB", size)
        image.paste(covered, box=(width // 2 - cover_w // 2, height // 2 - cover_h // 2))
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def image_size(data: bytes) -> tuple[int, int]:
    """An encoded image's (width, height), from its header."""
    with Image.open(io.BytesIO(data)) as image:
        return image.size
