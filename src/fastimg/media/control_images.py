"""Control images made from pictures, as ControlNet's own annotators make the images its models
were trained on: white lines on black, three channels.

canny: OpenCV's Canny edges of the grayscale image, thresholds 100 and 200 (the canny
ControlNet's defaults); OpenCV is the optional extra fastimg[controlnet], imported when used.
scribble: a sketch of dark lines on light paper inverted and thresholded (a pixel whose darkest
channel is below 127 is a stroke), as ControlNet's scribble demo does.
"""

import numpy as np
from PIL import Image

from ..errors import InputError, require
from ..settings import CONTROL_PREPROCESSORS, MODEL_PREPROCESSORS
from .images import to_rgb

CANNY_THRESHOLDS = (100, 200)  # low, high: ControlNet's canny annotator's defaults
SCRIBBLE_THRESHOLD = 127  # a darkest channel below this is a stroke
EDGE_THRESHOLD = 24  # of Pillow's FIND_EDGES response (0..255): the strong edges only


def canny(image: Image.Image, low: int = CANNY_THRESHOLDS[0], high: int = CANNY_THRESHOLDS[1]):
    """The Canny edges of `image` (grayscale), white on black, as an RGB image."""
    cv2 = require(*NEEDS["canny"])
    gray = np.asarray(to_rgb(image).convert("L"), dtype=np.uint8)
    edges = cv2.Canny(gray, low, high)
    return Image.fromarray(np.repeat(edges[:, :, None], 3, axis=2), "RGB")


def scribble(image: Image.Image, threshold: int = SCRIBBLE_THRESHOLD) -> Image.Image:
    """A sketch's dark strokes as white lines on black, as an RGB image."""
    pixels = np.asarray(to_rgb(image), dtype=np.uint8)
    strokes = np.where(pixels.min(axis=2) < threshold, 255, 0).astype(np.uint8)
    return Image.fromarray(np.repeat(strokes[:, :, None], 3, axis=2), "RGB")


def edges(image: Image.Image) -> Image.Image:
    """The image's edges as white lines on black (RGB), as a canny control image looks, made
    by Pillow alone: the control image of the int8 export's image check (and the doctor's)."""
    from PIL import ImageFilter

    response = image.convert("L").filter(ImageFilter.FIND_EDGES)
    return response.point(lambda v: 255 if v > EDGE_THRESHOLD else 0).convert("RGB")


PREPROCESSORS = {"canny": canny, "scribble": scribble}  # (depth: diffusion.depth, a model's)
assert (*PREPROCESSORS, *MODEL_PREPROCESSORS) == CONTROL_PREPROCESSORS
NEEDS = {"canny": ("cv2", "controlnet")}  # what a preprocessor imports: (module, its extra)


def check_available(name: str | None) -> None:
    """Raise MissingDependencyError, naming the extra, when preprocessor `name` cannot run here
    (checked with a call, before any work)."""
    if name in NEEDS:
        require(*NEEDS[name])


def preprocess(image: Image.Image, name: str | None) -> Image.Image:
    """`image` made into a control image by preprocessor `name` (None: as it is)."""
    if name is None:
        return image
    if name not in PREPROCESSORS:
        raise InputError(
            f"unknown control preprocessor {name!r}: choose one of {', '.join(PREPROCESSORS)}"
        )
    return PREPROCESSORS[name](image)
