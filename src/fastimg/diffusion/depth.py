"""control_preprocess depth: a depth map of the control image made by the engine folder's depth
model (a DPT exported with fastimg export --depth-model), run through the backend as
transformers' depth-estimation pipeline runs it in diffusers' depth ControlNet examples:
the image resized to the model's size (PIL, DPTImageProcessor's filter), rescaled and
normalized with its mean and std; the predicted depth brought back to the image's size by
torch's bicubic interpolation (align_corners=False), scaled to 0..255 by its own minimum and
maximum, and repeated over three channels (near is bright, as the depth ControlNets learned).
"""

import numpy as np
from PIL import Image

from ..engine_folder.manifest import Manifest
from ..errors import EngineError, InputError
from .arrays import to_host

FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}
CUBIC_A = -0.75  # torch's bicubic kernel


def check_available(manifest: Manifest) -> None:
    """Refuse control_preprocess depth for an engine folder without a depth model."""
    if not manifest.depth:
        raise InputError(
            f"control_preprocess depth needs a depth model, and the engine folder "
            f"{manifest.folder} has none: export it with  fastimg export MODEL --controlnet "
            "CONTROLNET --depth-model Intel/dpt-large  (or pass a depth map as the control image)"
        )


def depth_image(image: Image.Image, engines) -> Image.Image:
    """The depth map of `image` (RGB) as an RGB image of its size, made on `engines` (an
    EngineSet whose folder has a depth model)."""
    manifest = engines.manifest
    check_available(manifest)
    entry = manifest.depth
    # (a plan-set backend's engines for the image's size: none may be loaded before a call)
    loaded = engines.for_call(image.height, image.width, 1)
    session = loaded.sessions.get(entry["component"])
    if session is None:
        raise EngineError(
            f"the {loaded.backend} backend has not loaded the depth model: run "
            "--control-preprocess depth with --backend onnxruntime or openvino"
        )
    feeds = {"pixel_values": loaded.xp.asarray(pixel_values(image, entry))}
    (predicted,) = session.run(feeds).values()
    depth = to_host(predicted).astype(np.float32)[0]
    return to_image(resize_bicubic(depth, image.height, image.width))


def pixel_values(image: Image.Image, entry: dict) -> np.ndarray:
    """The model's input: 1 x 3 x H x W, as DPTImageProcessor makes it."""
    height, width = entry["size"]
    resized = image.convert("RGB").resize((width, height), resample=FILTERS[entry["resample"]])
    pixels = (np.asarray(resized, dtype=np.float64) * entry["rescale_factor"]).astype(np.float32)
    mean, std = (np.asarray(entry[k], dtype=np.float32) for k in ("mean", "std"))
    return ((pixels - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)


def resize_bicubic(depth: np.ndarray, height: int, width: int) -> np.ndarray:
    """`depth` (h x w) at height x width, as torch.nn.functional.interpolate(mode="bicubic",
    align_corners=False) resizes it."""
    return _cubic_weights(height, depth.shape[0]) @ depth @ _cubic_weights(width, depth.shape[1]).T


def _cubic_weights(size: int, source: int) -> np.ndarray:
    """The size x source matrix of torch's bicubic interpolation along one axis (source
    indices clamped at the borders)."""
    x = (np.arange(size, dtype=np.float64) + 0.5) * (source / size) - 0.5
    start = np.floor(x)
    t = x - start
    a = CUBIC_A
    near = lambda d: ((a + 2) * d - (a + 3)) * d * d + 1  # noqa: E731 (|d| <= 1)
    far = lambda d: ((a * d - 5 * a) * d + 8 * a) * d - 4 * a  # noqa: E731 (1 < |d| < 2)
    weights = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)
    matrix = np.zeros((size, source), dtype=np.float64)
    for k in range(4):
        columns = np.clip(start + k - 1, 0, source - 1).astype(int)
        np.add.at(matrix, (np.arange(size), columns), weights[:, k])
    return matrix.astype(np.float32)


def to_image(depth: np.ndarray) -> Image.Image:
    """A depth map scaled by its minimum and maximum to 0..255 (truncated, as the pipeline's
    uint8 cast), three channels."""
    low, high = float(depth.min()), float(depth.max())
    scaled = (depth - low) / (high - low) if high > low else np.zeros_like(depth)
    gray = (scaled * 255).astype(np.uint8)
    return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2), "RGB")
