"""ComfyUI's IMAGE and MASK values <-> PIL images: the only place the nodes touch torch.

IMAGE is a float tensor [batch, height, width, channels] with values 0-1 (LoadImage divides
8-bit values by 255); MASK is [batch, height, width] or [height, width], 1 where ComfyUI masks.
"""

import numpy as np
from PIL import Image

from ..errors import InputError
from ..media.images import to_rgb


def to_pil_images(images, what: str = "image") -> list[Image.Image]:
    """The RGB PIL images of an IMAGE batch (or a list of them, as ComfyUI's list outputs give);
    a batch whose images differ in size is refused."""
    batches = images if isinstance(images, (list, tuple)) else [images]
    arrays = []
    for batch in batches:
        array = _numpy(batch, what)
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4 or array.shape[-1] not in (1, 3, 4) or 0 in array.shape:
            raise InputError(
                f"the {what} is not a ComfyUI IMAGE (batch, height, width, channels), got the "
                f"shape {tuple(array.shape)}: connect an IMAGE output, such as Load Image's"
            )
        arrays.extend(array)
    sizes = sorted({(a.shape[1], a.shape[0]) for a in arrays})
    if len(sizes) > 1:
        listed = ", ".join(f"{w}x{h}" for w, h in sizes)
        raise InputError(
            f"the {what} batch mixes sizes ({listed}): one call transforms images of one "
            "size; resize them to one size first (Upscale Image) or queue them apart"
        )
    return [_pil(a) for a in arrays]


def to_pil_masks(mask, size: tuple[int, int]) -> list[Image.Image]:
    """The fastimg masks (L: white is repainted) of a ComfyUI MASK batch, each of which must be
    `size` (width, height), the image's."""
    array = _numpy(mask, "mask")
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or 0 in array.shape:
        raise InputError(
            f"the mask is not a ComfyUI MASK (batch, height, width), got the shape "
            f"{tuple(array.shape)}: connect a MASK output, such as Load Image's"
        )
    if (array.shape[2], array.shape[1]) != size:
        raise InputError(
            f"the mask is {array.shape[2]}x{array.shape[1]} but the image is "
            f"{size[0]}x{size[1]}: give a mask of the image's size"
        )
    return [Image.fromarray(_uint8(one), mode="L") for one in array]


def to_image_batch(images: list[Image.Image]):
    """The ComfyUI IMAGE (float32 torch tensor, 0-1, channels last) of same-size PIL images."""
    import torch

    arrays = [np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0 for image in images]
    return torch.from_numpy(np.stack(arrays))


def _numpy(value, what: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch to ask
        value = value.detach().float().cpu().numpy()
    array = np.asarray(value, dtype=np.float32)
    if not np.isfinite(array).all():
        raise InputError(f"the {what} holds values that are not finite numbers (NaN or inf)")
    return array


def _uint8(array: np.ndarray) -> np.ndarray:
    """0-1 floats to 8 bits, rounded: the values LoadImage divided by 255 come back exactly."""
    return np.rint(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)


def _pil(array: np.ndarray) -> Image.Image:
    pixels = _uint8(array)
    if pixels.shape[-1] == 1:
        return Image.fromarray(pixels[..., 0], mode="L").convert("RGB")
    return to_rgb(Image.fromarray(pixels, mode="RGBA" if pixels.shape[-1] == 4 else "RGB"))
