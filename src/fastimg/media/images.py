"""Image loading (from files and from bytes), resizing, and conversion to the model's pixel space
and back. Writing images with their labels is media.labels'."""

import io
import logging
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputError

log = logging.getLogger("fastimg")

MIN_SIDE = 16  # smaller images give latents torch draws noise for on another code path
# Rows of a deep (16/32-bit) grayscale image converted at a time: its float64 band, not the whole.
DEEP_ROWS = 256
MAX_PIXELS = 64_000_000  # 8000 x 8000; larger files are refused before they are decoded
# The photo the doctor, the bench and the int8 calibration transform (shipped with fastimg).
EXAMPLE_IMAGE = Path(__file__).parents[1] / "assets" / "example.png"


def load_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open an image file as RGB, honouring EXIF orientation; transparency goes onto white.

    Images over `max_pixels` are refused from their header, before decoding (decompression
    bombs); of an animated image the first frame is used, with a warning.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image {path} does not exist or is not a file")
    return _decode(path, str(path), max_pixels, lambda: looks_like_an_image(path))


def decode_image(data: bytes, name: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An image file's bytes as RGB, with load_image's checks and messages (naming `name`)."""
    return _decode(io.BytesIO(data), name, max_pixels, lambda: starts_like_an_image(data))


def _decode(source, name: str, max_pixels: int, recognised) -> Image.Image:
    """`source` (a path or a binary file) decoded as load_image describes; `recognised()` tells
    whether a file Pillow cannot open starts like an image (a broken header, not another format)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we check ourselves
            with Image.open(source) as opened:
                _check_pixels(name, opened.size, max_pixels)
                if getattr(opened, "is_animated", False):
                    log.warning("%s is animated: using its first frame", name)
                    opened.seek(0)
                opened.load()
                image = ImageOps.exif_transpose(opened)
    except Image.DecompressionBombError as exc:
        raise InputError(
            f"image {name} is over the limit of {max_pixels / 1e6:.1f} megapixels ({exc}): "
            "downscale it first"
        ) from None
    except UnidentifiedImageError:
        if recognised():
            raise InputError(
                f"image {name} is damaged or truncated: its header is broken"
            ) from None
        raise InputError(
            f"{name} is not an image format that can be read (use PNG, JPEG, WebP, GIF, BMP "
            "or TIFF)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(f"image {name} is damaged or truncated: {exc}") from None
    return to_rgb(image)


IMAGE_SIGNATURES = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\0", b"MM\0*")


def looks_like_an_image(path: Path) -> bool:
    """Whether the file starts like an image format fastimg reads (its suffix aside)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    return starts_like_an_image(head)


def starts_like_an_image(data: bytes) -> bool:
    """Whether `data` (a file's first 12 bytes or more) starts like an image fastimg reads."""
    return data.startswith(IMAGE_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def _check_pixels(name: str, size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise InputError(
            f"image {name} is {width}x{height}, over the limit of {max_pixels / 1e6:.1f} "
            "megapixels: downscale it first, or raise --max-pixels if you trust the file"
        )


def parse_size(text: str) -> tuple[int, int] | int:
    """'768x512' -> (768, 512) exact; '512' -> 512, the longer side (aspect kept)."""
    match = re.fullmatch(r"\s*(\d{1,6})\s*(?:[xX]\s*(\d{1,6}))?\s*", text)
    if match is None:
        raise InputError(f"size {text!r} is not WIDTHxHEIGHT (like 768x512) or one number")
    width, height = match.groups()
    return int(width) if height is None else (int(width), int(height))


def resize_to(image: Image.Image, size: tuple[int, int] | int) -> Image.Image:
    """`image` resized to `size` (width, height), or with its longer side scaled to `size`."""
    if isinstance(size, int):
        scale = size / max(image.size)
        size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
    return image if image.size == size else image.resize(size, resample=Image.LANCZOS)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy of any PIL image: palette, grayscale, CMYK and alpha modes converted."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image)  # its own 16/32-bit type: no float64 copy of the whole image
        full = _full_scale(image.mode, values)
        gray = np.empty(values.shape, np.uint8)
        for top in range(0, len(values), DEEP_ROWS):  # float64 a band at a time
            band = values[top : top + DEEP_ROWS].astype(np.float64) / full
            gray[top : top + DEEP_ROWS] = (band.clip(0, 1) * 255).round()
        return Image.fromarray(gray).convert("RGB")
    return image.convert("RGB")


def _full_scale(mode: str, values: np.ndarray) -> float:
    """White for a high-bit-depth grayscale image: 16-bit modes 65535; 32-bit integers by the
    range their values occupy (8, 16 or 31 bits); floats 1.0 when they lie in [0, 1], else 255."""
    top = float(values.max(initial=0.0))
    if mode.startswith("I;16"):
        return 65535.0
    if mode == "F":
        return 1.0 if top <= 1.0 else 255.0
    for bits in (8, 16):
        if top <= 2**bits - 1:
            return float(2**bits - 1)
    return float(2**31 - 1)


def check_sides(
    size: tuple[int, int], multiple: int, max_side: int | None, hint: Callable[[], str] = str
) -> tuple[int, int]:
    """The (width, height) an image of `size` runs at (each side floored to `multiple`), refused
    when a side is under MIN_SIDE or over `max_side` (the refusal ending with what `hint()`
    says); callers with only the file's header check it before decoding."""
    width, height = (side - side % multiple for side in size)
    if min(width, height) < max(MIN_SIDE, multiple):
        raise InputError(
            f"image of {size[0]}x{size[1]} pixels is too small: each side needs at "
            f"least {max(MIN_SIDE, multiple)} pixels"
        )
    if max_side is not None and max(width, height) > max_side:
        raise InputError(
            f"image of {size[0]}x{size[1]} pixels is larger than these engines take "
            f"(sides up to {max_side} px): shrink it, e.g. with --size {max_side}{hint()}"
        )
    return width, height


def to_pixels(
    image: Image.Image, multiple: int, max_side: int | None = None, hint: Callable[[], str] = str
) -> np.ndarray:
    """float32 NCHW in [-1, 1], each side floored to `multiple` and Lanczos-resized (diffusers);
    refused as check_sides says."""
    image = to_rgb(image)
    width, height = check_sides(image.size, multiple, max_side, hint)
    if (width, height) != image.size:
        image = image.resize((width, height), resample=Image.LANCZOS)
    array = np.asarray(image)
    # Channel by channel into the NCHW result, each operation in place (diffusers' x / 255 * 2 - 1
    # in float32, rounded as it rounds): four passes over one array, no temporaries.
    pixels = np.empty((1, 3, height, width), np.float32)
    for c in range(3):
        np.divide(array[..., c], np.float32(255.0), out=pixels[0, c], dtype=np.float32)
    pixels *= np.float32(2.0)
    pixels -= np.float32(1.0)
    return pixels


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """NHWC uint8 from decoder output in [-1, 1], rounded like diffusers' postprocess (NumPy or
    CuPy in, the same kind out)."""
    planes = pixels * np.float32(0.5)  # (then in place: one array, no temporaries)
    planes += np.float32(0.5)
    planes.clip(0, 1, out=planes)
    planes *= 255
    planes.round(out=planes)
    planes = planes.astype(np.uint8)
    # Channel by channel into a C-ordered NHWC array: PIL then takes its buffer as it is (a
    # transposed view cost Image.fromarray a strided copy, several times this loop).
    n, channels, height, width = planes.shape
    images = np.empty_like(planes, shape=(n, height, width, channels))
    for c in range(channels):
        images[..., c] = planes[:, c]
    return images


def psnr(a, b) -> float:
    """Peak signal-to-noise ratio of two 8-bit images (arrays or PIL), in dB; inf when equal."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} and {b.shape}")
    mse = ((a - b) ** 2).mean()
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))
