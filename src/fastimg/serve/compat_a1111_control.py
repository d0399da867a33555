"""The ControlNet extension's units (`alwayson_scripts.controlnet.args`, sd-webui-controlnet's
API, as webuiapi's ControlNetUnit sends them) read as fastimg's control fields.

fastimg's engine folders hold one ControlNet, so one enabled unit is taken: its image (none:
the init image, as the extension does in img2img), `module` none or canny (thresholds 100 and
200, run at the image's own size), `weight`, `guidance_start` and `guidance_end`. What the
folder's ControlNet cannot do as asked is refused by name, never ignored.
"""

from dataclasses import dataclass

from ..errors import InputError

SCRIPT = "controlnet"
MODULES = {"none": None, "canny": "canny"}
JUST_RESIZE = ("just resize", "0", "resize only")
# A unit's fields at the values that change nothing here: (accepted, what to send).
UNIT_NEUTRAL = {
    "mask": (lambda v: v in (None, ""), "a unit's mask is not supported: leave it out"),
    "low_vram": (lambda v: True, ""),
    "hr_option": (lambda v: True, ""),  # (no hires fix in img2img)
    "control_mode": (lambda v: v in (None, 0, "Balanced"), "send 'Balanced'"),
    "guessmode": (lambda v: not v, "send false"),
    "guess_mode": (lambda v: not v, "send false"),
    "save_detected_map": (lambda v: True, ""),
    "processor_res": (lambda v: True, ""),  # (checked with the module)
    "threshold_a": (lambda v: True, ""),
    "threshold_b": (lambda v: True, ""),
    "pixel_perfect": (lambda v: True, ""),
    "resize_mode": (lambda v: True, ""),  # (checked against the image's size)
}
UNIT_FIELDS = ("enabled", "image", "input_image", "module", "model", "weight", "guidance_start",
               "guidance_end", *UNIT_NEUTRAL)  # fmt: skip


@dataclass(frozen=True)
class ControlUnit:
    """An enabled unit read: fastimg's control fields, its image as sent (None: the init
    image's), and what is checked once the sizes are known."""

    fields: dict
    image: str | dict | None
    model: str | None
    just_resize: bool
    native_resolution: bool  # whether its preprocessor may run at the image's own size


def read_units(scripts: dict | None) -> ControlUnit | None:
    """The one enabled ControlNet unit of `alwayson_scripts` (None: none enabled)."""
    script = next((v for k, v in (scripts or {}).items() if k.lower() == SCRIPT), None)
    args = script.get("args") if isinstance(script, dict) else script
    if not isinstance(args or [], list):
        raise InputError('alwayson_scripts.controlnet must be {"args": [unit, ...]}')
    units = [unit for unit in args or [] if unit is not False and _enabled(unit)]
    if not units:
        return None
    if len(units) > 1:
        raise InputError(f"{len(units)} ControlNet units are enabled, but fastimg's engines hold "
                         "one ControlNet: send one unit")  # fmt: skip
    (unit,) = units
    unknown = [key for key in unit if key not in UNIT_FIELDS]
    if unknown:
        raise InputError(f"unknown ControlNet unit field {unknown[0]!r}: the fields are "
                         f"{', '.join(UNIT_FIELDS)}")  # fmt: skip
    for key, (neutral, fix) in UNIT_NEUTRAL.items():
        if key in unit and not neutral(unit[key]):
            raise InputError(f"the ControlNet unit's {key!r} ({unit[key]!r}) is one fastimg "
                             f"cannot honour: {fix}")  # fmt: skip
    module = str(unit.get("module") or "none").lower()
    if module not in MODULES:
        raise InputError(f"the ControlNet unit's module {unit.get('module')!r} is not one fastimg "
                         f"runs: send one of {', '.join(MODULES)}")  # fmt: skip
    if module == "canny" and (unit.get("threshold_a"), unit.get("threshold_b")) != (100, 200):
        raise InputError("fastimg's canny runs thresholds 100 and 200: send threshold_a 100 and "
                         "threshold_b 200")  # fmt: skip
    fields = {"control_scale": unit.get("weight", 1.0),
              "control_start": unit.get("guidance_start", 0.0),
              "control_end": unit.get("guidance_end", 1.0)}  # fmt: skip
    if MODULES[module] is not None:
        fields["control_preprocess"] = MODULES[module]
    image = unit.get("image") or unit.get("input_image") or None
    resize = str(unit.get("resize_mode", "Just Resize")).lower()
    native = module == "none" or bool(unit.get("pixel_perfect"))
    return ControlUnit(fields, image, unit.get("model"), resize in JUST_RESIZE, native)


def unit_image(unit: ControlUnit, decode_base64) -> bytes | None:
    """The unit's image bytes (None: the init image's)."""
    image = unit.image
    if isinstance(image, dict):  # {"image": base64, "mask": base64 or None}
        if image.get("mask"):
            raise InputError("the ControlNet unit's image mask is not supported: leave it out")
        image = image.get("image")
    if image is None:
        return None
    if not isinstance(image, str):
        raise InputError("the ControlNet unit's image must be base64 text")
    return decode_base64(image, "alwayson_scripts.controlnet image")


def check_unit(unit: ControlUnit, control_size, image_size, served: str) -> None:
    """Refuse a unit whose model is not the one the engines hold, or whose image would be
    resized or preprocessed otherwise than the extension would do it."""
    model = unit.model
    if model not in (None, "", "None") and model != served and not model.startswith(served + " ["):
        raise InputError(f"the ControlNet unit's model {model!r} is not the one these engines "
                         f"hold: send {served!r} (or 'None')")  # fmt: skip
    if control_size != image_size and not unit.just_resize:
        raise InputError(f"the control image is {control_size[0]}x{control_size[1]} and the "
                         f"image {image_size[0]}x{image_size[1]}: fastimg stretches it "
                         "(resize_mode 'Just Resize'): send that, or one of its size")  # fmt: skip
    if control_size != image_size and unit.fields.get("control_preprocess"):
        raise InputError("canny runs at the image's own size here: send the control image at "
                         f"{image_size[0]}x{image_size[1]}")  # fmt: skip
    if not unit.native_resolution:
        raise InputError("canny runs at the image's own size here: send pixel_perfect true")


def _enabled(unit) -> bool:
    """Whether a unit (a dict) is turned on (A1111's default: on)."""
    if not isinstance(unit, dict):
        raise InputError('each ControlNet unit must be an object: {"image": ..., ...}')
    return bool(unit.get("enabled", True))
