"""One fastimg img2img node run: ComfyUI's tensors in, fastimg's call on each image, tensors
and labels out."""

from ..errors import Cancelled, InputError
from ..settings import CallSettings
from .engines import EnginesHandle
from .tensors import to_image_batch, to_pil_images, to_pil_masks


def transform_batch(engines: EnginesHandle, image, settings: dict, control_image=None, mask=None):
    """(IMAGE of the outputs, their labels): each input image transformed with `settings`
    (CallSettings' names) and the same seed, as `fastimg transform` does each file."""
    if not isinstance(engines, EnginesHandle):
        raise InputError("connect the engines input to a Load fastimg engines node")
    images = to_pil_images(image)
    controls = None if control_image is None else to_pil_images(control_image, "control image")
    masks = None if mask is None else to_pil_masks(mask, images[0].size)
    controls, masks = _each(controls, len(images), "control"), _each(masks, len(images), "mask")
    call = CallSettings(**settings)
    outputs, labels = [], []
    progress = _progress(len(images) * _steps(call))
    for picture, control, mask_image in zip(images, controls, masks, strict=True):
        one = call.with_values(control_image=control, mask_image=mask_image)
        made = _transform_one(engines, picture, one, progress)
        for result in made:
            outputs.append(result)
            labels.append(_labels(result.info, engines))
    return to_image_batch(outputs), labels


def _transform_one(engines: EnginesHandle, picture, call: CallSettings, progress) -> list:
    if engines.url:
        from .remote import transform_remote

        return transform_remote(engines.url, picture, call)
    stop = _interrupted()
    try:
        return engines.pipeline()(image=picture, **call.arguments(), callback=progress,
                                  **({"should_stop": stop} if stop else {}))  # fmt: skip
    except Cancelled:
        from comfy.model_management import throw_exception_if_processing_interrupted

        throw_exception_if_processing_interrupted()  # ComfyUI's own "interrupted", not an error
        raise


def _each(given: list | None, count: int, what: str) -> list:
    """One control image or mask per input image: none, one for all, or one each."""
    if given is None:
        return [None] * count
    if len(given) == 1:
        return given * count
    if len(given) != count:
        raise InputError(
            f"{len(given)} {what} images for {count} images: give one {what} image for all, or "
            "one per image"
        )
    return given


def _labels(info: dict, engines: EnginesHandle) -> dict:
    where = {"fastimg:server": engines.url} if engines.url else {"fastimg:engines": engines.folder}
    return {**info, **where}


def _steps(call: CallSettings) -> int:
    return max(1, round(call.num_inference_steps * call.strength))


def _progress(total: int):
    """A callback that moves ComfyUI's progress bar, or None outside ComfyUI."""
    try:
        from comfy.utils import ProgressBar
    except ImportError:
        return None
    bar = ProgressBar(total)
    return lambda step, steps: bar.update(1)


def _interrupted():
    """should_stop for the pipeline: true once ComfyUI's Cancel was pressed (None outside)."""
    try:
        from comfy.model_management import processing_interrupted
    except ImportError:
        return None
    return processing_interrupted
