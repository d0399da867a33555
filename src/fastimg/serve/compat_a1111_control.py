"""The ControlNet extension's units (`alwayson_scripts.controlnet.args`, sd-webui-controlnet's
API, as webuiapi's ControlNetUnit sends them) read as fastimg's control fields, and what its
info routes (/controlnet/module_list, model_list) list.

The enabled units steer the engine folder's ControlNets in order (diffusers'
MultiControlNetModel), each with its image (none: the init image, as the extension does in
img2img), `module` (none; canny with thresholds 100 and 200 and scribble, run at the image's
own size; the depth modules, by the folder's depth model), `weight`, `guidance_start` and
`guidance_end`. What the folder's ControlNets cannot do as asked is refused by name, never
ignored.
"""

from dataclasses import dataclass

from ..diffusion.control import model_label
from ..errors import InputError, MissingDependencyError
from ..media import control_images
from ..settings import AS_GIVEN

SCRIPT = "controlnet"
API_VERSION = 2  # the extension's /controlnet/version
DEPTH_MODULES = ("depth", "depth_midas", "depth_leres", "depth_leres++", "depth_zoe",
                 "depth_anything", "depth_anything_v2")  # fmt: skip
MODULES = {"none": None, "canny": "canny", "scribble": "scribble",
           **dict.fromkeys(DEPTH_MODULES, "depth")}  # fmt: skip
AT_IMAGE_SIZE = ("canny", "scribble")  # run per pixel at the image's own size (pixel_perfect)
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
    """An enabled unit read: its place among the units sent, fastimg's control fields, its
    image as sent (None: the init image's), and what is checked once the sizes are known."""

    index: int
    module: str
    fields: dict
    image: str | dict | None
    model: str | None
    just_resize: bool
    native_resolution: bool  # whether its preprocessor may run at the image's own size

    @property
    def preprocessor(self) -> str | None:
        """fastimg's preprocessor (None: the image as given)."""
        return MODULES[self.module]


def read_units(scripts: dict | None) -> tuple[ControlUnit, ...]:
    """The enabled ControlNet units of `alwayson_scripts`, in order (() for none)."""
    script = next((v for k, v in (scripts or {}).items() if k.lower() == SCRIPT), None)
    args = script.get("args") if isinstance(script, dict) else script
    if not isinstance(args or [], list):
        raise InputError('alwayson_scripts.controlnet must be {"args": [unit, ...]}')
    return tuple(_read_unit(i, unit) for i, unit in enumerate(args or [])
                 if unit is not False and _enabled(unit))  # fmt: skip


def _read_unit(index: int, unit: dict) -> ControlUnit:
    """One enabled unit (number `index` of those sent) read and checked."""
    name = f"ControlNet unit {index}"
    unknown = [key for key in unit if key not in UNIT_FIELDS]
    if unknown:
        raise InputError(f"unknown {name} field {unknown[0]!r}: the fields are "
                         f"{', '.join(UNIT_FIELDS)}")  # fmt: skip
    for key, (neutral, fix) in UNIT_NEUTRAL.items():
        if key in unit and not neutral(unit[key]):
            raise InputError(f"the {name}'s {key!r} ({unit[key]!r}) is one fastimg cannot "
                             f"honour: {fix}")  # fmt: skip
    module = str(unit.get("module") or "none").lower()
    if module not in MODULES:
        raise InputError(f"the {name}'s module {unit.get('module')!r} is not one fastimg runs: "
                         f"send one of {', '.join(MODULES)}")  # fmt: skip
    if module == "canny" and (unit.get("threshold_a"), unit.get("threshold_b")) != (100, 200):
        raise InputError(f"fastimg's canny runs thresholds 100 and 200: send the {name}'s "
                         "threshold_a 100 and threshold_b 200")  # fmt: skip
    fields = {"control_scale": unit.get("weight", 1.0),
              "control_start": unit.get("guidance_start", 0.0),
              "control_end": unit.get("guidance_end", 1.0)}  # fmt: skip
    image = unit.get("image") or unit.get("input_image") or None
    resize = str(unit.get("resize_mode", "Just Resize")).lower()
    native = module not in AT_IMAGE_SIZE or bool(unit.get("pixel_perfect"))
    return ControlUnit(index, module, fields, image, unit.get("model"), resize in JUST_RESIZE,
                       native)  # fmt: skip


def unit_fields(units: tuple[ControlUnit, ...]) -> dict:
    """fastimg's control fields of the units: one value each for one unit, else a list (one
    per ControlNet, in order)."""
    keys = ("control_scale", "control_start", "control_end")
    fields = {key: [unit.fields[key] for unit in units] for key in keys}
    preprocess = [unit.preprocessor or AS_GIVEN for unit in units]
    if len(units) == 1:
        fields = {key: values[0] for key, values in fields.items()}
        preprocess = preprocess[0]
    if any(unit.preprocessor for unit in units):
        fields["control_preprocess"] = preprocess
    return fields


def unit_image(unit: ControlUnit, decode_base64) -> bytes | None:
    """The unit's image bytes (None: the init image's)."""
    image = unit.image
    if isinstance(image, dict):  # {"image": base64, "mask": base64 or None}
        if image.get("mask"):
            raise InputError(f"the ControlNet unit {unit.index}'s image mask is not supported: "
                             "leave it out")  # fmt: skip
        image = image.get("image")
    if image is None:
        return None
    if not isinstance(image, str):
        raise InputError(f"the ControlNet unit {unit.index}'s image must be base64 text")
    return decode_base64(image, f"alwayson_scripts.controlnet unit {unit.index}'s image")


def controlnet_names(manifest) -> list[str]:
    """The names of the folder's ControlNets in order (as its images' labels name them)."""
    if not manifest.control:
        return []
    names = model_label(manifest, len(manifest.control["controlnets"]))["fastimg:control_model"]
    return names if isinstance(names, list) else [names]


def check_units(units: tuple[ControlUnit, ...], manifest) -> None:
    """Refuse more units than the folder has ControlNets, a unit whose model is not the
    folder's ControlNet in its place, and a depth module without the folder's depth model."""
    names = controlnet_names(manifest)
    if not names:
        raise InputError(f"a ControlNet unit was sent, but the engine folder {manifest.folder} "
                         "has no ControlNet: export the model with  fastimg export MODEL "
                         "--controlnet CONTROLNET  (or disable the units)")  # fmt: skip
    if len(units) > len(names):
        raise InputError(f"{len(units)} ControlNet units are enabled, but the engine folder "
                         f"holds {len(names)} ControlNet{'s' * (len(names) > 1)} "
                         f"({', '.join(names)}): enable at most {len(names)}, one per ControlNet "
                         "in that order (or export more with  fastimg export MODEL --controlnet "
                         "A --controlnet B)")  # fmt: skip
    for unit, served in zip(units, names, strict=False):
        model = unit.model
        if model not in (None, "", "None", served) and not model.startswith(served + " ["):
            raise InputError(f"the ControlNet unit {unit.index}'s model {model!r} is not the "
                             f"engines' ControlNet in its place: send {served!r} (or 'None'); "
                             f"the units steer {', '.join(names)} in that order")  # fmt: skip
        if unit.preprocessor == "depth" and not manifest.depth:
            raise InputError(f"the ControlNet unit {unit.index}'s module {unit.module!r} needs a "
                             f"depth model, and the engine folder {manifest.folder} lacks one: "
                             "export it with  fastimg export MODEL --controlnet CONTROLNET "
                             "--depth-model Intel/dpt-large  (or send a depth map with module "
                             "'none')")  # fmt: skip


def check_unit_size(unit: ControlUnit, control_size, image_size) -> None:
    """Refuse a unit whose image would be resized or preprocessed otherwise than the extension
    would do it."""
    name = f"the ControlNet unit {unit.index}"
    if control_size != image_size and not unit.just_resize:
        raise InputError(f"{name}'s image is {control_size[0]}x{control_size[1]} and the "
                         f"image {image_size[0]}x{image_size[1]}: fastimg stretches it "
                         "(resize_mode 'Just Resize'): send that, or one of its size")  # fmt: skip
    if unit.module in AT_IMAGE_SIZE and control_size != image_size:
        raise InputError(f"{unit.module} runs at the image's own size here: send {name}'s "
                         f"image at {image_size[0]}x{image_size[1]}")  # fmt: skip
    if not unit.native_resolution:
        raise InputError(f"{unit.module} runs at the image's own size here: send {name}'s "
                         "pixel_perfect true")  # fmt: skip


def module_list(manifest) -> list[str]:
    """The modules a unit may send here: those whose preprocessor runs on this machine (the
    depth ones where the folder has a depth model)."""
    return [module for module, name in MODULES.items() if _runs_here(name, manifest)]


def _runs_here(preprocessor: str | None, manifest) -> bool:
    """Whether `preprocessor` can run here (its optional dependency installed, its model in
    the folder)."""
    if preprocessor == "depth":
        return bool(manifest.depth)
    try:
        control_images.check_available(preprocessor)
    except MissingDependencyError:
        return False
    return True


def _enabled(unit) -> bool:
    """Whether a unit (a dict) is turned on (A1111's default: on)."""
    if not isinstance(unit, dict):
        raise InputError('each ControlNet unit must be an object: {"image": ..., ...}')
    return bool(unit.get("enabled", True))
