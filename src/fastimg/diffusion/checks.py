"""A call's settings checked against an engine folder, with none of its engines loaded: the
sampler it runs, its schedule's per-step plan and its SDXL arguments. The pipeline checks
every call here at entry, and a batch or a Ray driver checks all its jobs here before any runs.
"""

import logging
from dataclasses import dataclass

from ..engine_folder.manifest import Manifest
from ..errors import InputError
from ..settings import AS_GIVEN, CHOICE, SAMPLERS, SETTINGS, CallSettings
from . import schedules
from .conditioning import check_sdxl_arguments
from .control import check_settings as check_control
from .masks import check_settings as check_mask
from .vae_tiles import check_tile_size

log = logging.getLogger("fastimg")

_WARNED: set[tuple] = set()  # (folder, scheduler class) whose fallback to ddim was said once


@dataclass(frozen=True)
class CheckedCall:
    """A call's settings with every value checked, its sampler resolved and its plan made."""

    settings: CallSettings
    sampler: str
    plan: schedules.Plan
    micro: dict  # the SDXL arguments, normalized

    @property
    def steps(self) -> int:
        """The UNet steps that run (strength x the scheduled steps)."""
        return self.plan.steps


def resolve_sampler(manifest: Manifest, scheduler: str | None) -> str:
    """The sampler to run: the one asked for, else the model's own, else ddim with a warning
    (once per engine folder)."""
    if scheduler is not None:
        if scheduler not in SAMPLERS:
            raise InputError(
                f"unknown scheduler {scheduler!r}: choose one of {', '.join(SAMPLERS)}"
            )
        return scheduler
    own = schedules.default_sampler(manifest.scheduler)
    if own is not None:
        return own
    name = manifest.scheduler.get("_class_name")
    if (manifest.folder, name) not in _WARNED:
        _WARNED.add((manifest.folder, name))
        log.warning(
            "the model's scheduler %s has no fastimg sampler; using %s with its config "
            "(choose one with --scheduler)",
            name,
            schedules.FALLBACK_SAMPLER,
        )
    return schedules.FALLBACK_SAMPLER


def plan_for(
    manifest: Manifest, sampler: str, steps: int, strength: float, masked: bool = False
) -> schedules.Plan:
    """The per-step coefficients of a call on `manifest`'s engines (`masked`: an inpainting
    call's)."""
    return schedules.make_plan(
        manifest.scheduler,
        sampler,
        steps,
        strength,
        # an LCM-distilled UNet (timestep_cond input) cuts its schedule by the strength, as
        # LatentConsistencyModelImg2ImgPipeline; masked, it is StableDiffusionInpaintPipeline's
        strength_in_schedule="timestep_cond" in manifest.components["unet"]["inputs"]
        and not masked,
    )


def check_values(settings: CallSettings) -> CallSettings:
    """Every value checked as the Python API takes it (numbers of any real type become
    Python's own); the prompt is required."""
    if not isinstance(settings.prompt, str):
        raise InputError(f"prompt must be a string, got {type(settings.prompt).__name__}")
    checked = {s.name: _checked(s, settings.value(s.name)) for s in SETTINGS if not s.sdxl}
    images = settings.control_image
    if isinstance(images, list | tuple):  # several ControlNets' images ([] or one: as given)
        checked["control_image"] = None if not images else tuple(images)
    return settings.with_values(**checked)


def _checked(setting, value):
    """One setting's value checked; a ControlNet setting's list (one per ControlNet) each."""
    if setting.per_controlnet and isinstance(value, list | tuple):
        if not value:
            raise InputError(f"{setting.name} is an empty list: give one value, or one each")
        if any(isinstance(v, list | tuple) for v in value):
            raise InputError(f"{setting.name} must be one value or a flat list, got {value!r}")
        values = tuple(_checked(setting, v) for v in value)
        return values[0] if len(values) == 1 else values
    if setting.per_controlnet and setting.kind == CHOICE and value == AS_GIVEN:
        return None  # (a preprocessor 'none': the image as given)
    return setting.check(value)


def check_call(manifest: Manifest, settings: CallSettings) -> CheckedCall:
    """`settings` checked against `manifest`'s engines: values, SDXL arguments, sampler and
    the plan (a strength and step count that run no step are refused here)."""
    settings = check_values(settings)
    micro = check_sdxl_arguments(manifest, dict(settings.sdxl))
    check_control(manifest, settings)
    check_mask(manifest, settings)
    check_tile_size(manifest, settings.vae_tile_size)
    sampler = resolve_sampler(manifest, settings.scheduler)
    plan = plan_for(manifest, sampler, settings.num_inference_steps, settings.strength,
                    settings.mask_image is not None)  # fmt: skip
    return CheckedCall(settings, sampler, plan, micro)
