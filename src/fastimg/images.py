"""Image loading, conversion to the model's pixel space and back, and saving with metadata."""

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from .errors import InputError

MIN_SIDE = 16  # smaller images give latents torch draws noise for on another code path


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB, honouring EXIF orientation; transparency goes onto white."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image {path} does not exist or is not a file")
    try:
        with Image.open(path) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)
    except Image.DecompressionBombError as exc:
        raise InputError(f"image {path} is too large to decode safely: {exc}") from None
    except UnidentifiedImageError:
        raise InputError(f"{path} is not an image format that can be read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"image {path} is damaged or truncated: {exc}") from None
    return to_rgb(image)


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
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        scaled = np.asarray(image, dtype=np.float64) / (65535.0 if image.mode != "I" else 1.0)
        return Image.fromarray((scaled.clip(0, 1) * 255).round().astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def to_pixels(image: Image.Image, multiple: int) -> np.ndarray:
    """float32 NCHW in [-1, 1], each side floored to `multiple` and Lanczos-resized (diffusers)."""
    image = to_rgb(image)
    width, height = (side - side % multiple for side in image.size)
    if min(width, height) < max(MIN_SIDE, multiple):
        raise InputError(
            f"image of {image.size[0]}x{image.size[1]} pixels is too small: each side needs at "
            f"least {max(MIN_SIDE, multiple)} pixels"
        )
    if (width, height) != image.size:
        image = image.resize((width, height), resample=Image.LANCZOS)
    array = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    return (array.transpose(2, 0, 1)[None] * np.float32(2.0) - np.float32(1.0)).copy()


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """NHWC uint8 from decoder output in [-1, 1], rounded like diffusers' postprocess."""
    images = np.clip(pixels * np.float32(0.5) + np.float32(0.5), 0, 1).transpose(0, 2, 3, 1)
    return (images * 255).round().astype(np.uint8)


def save_png(image: Image.Image, path: str | Path, metadata: dict[str, str]) -> Path:
    """Write `image` as PNG with text metadata, atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        info.add_itxt(key, str(value))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def psnr(a, b) -> float:
    """Peak signal-to-noise ratio of two 8-bit images (arrays or PIL), in dB; inf when equal."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} and {b.shape}")
    mse = ((a - b) ** 2).mean()
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))
