"""The UNet's inputs beyond sample, timestep and text: one small function per kind, named as
the UNet's ONNX input, chosen by the inputs the manifest lists (as diffusers switches on
`unet.config`): an LCM-distilled UNet's timestep_cond, SDXL's text_embeds and time_ids.
"""

import logging
from dataclasses import dataclass, field

import numpy as np

from ..engine_folder.manifest import Manifest
from ..errors import EngineError, InputError
from ..settings import BASE_ONLY, BY_NAME, REFINER_ONLY, SDXL_ARGUMENTS
from . import schedules
from .arrays import to_host

log = logging.getLogger("fastimg")

# Inputs every UNet takes; anything else it lists is extra conditioning, built by CONDITIONING.
UNET_INPUTS = ("sample", "timestep", "encoder_hidden_states")


@dataclass(frozen=True)
class ConditioningCall:
    """What the UNet's extra conditioning is built from, for one request of a call."""

    images: int
    guidance_scale: float
    cfg: bool = False
    height: int = 0
    width: int = 0
    pooled: np.ndarray | None = None  # SDXL's pooled text embeddings: [negative, positive]
    micro: dict = field(default_factory=dict)  # SDXL's size, crop and aesthetic arguments
    requires_aesthetics_score: bool = False


def timestep_cond(spec: dict, call: ConditioningCall) -> np.ndarray:
    """An LCM-distilled UNet's timestep_cond: the embedding of w = guidance - 1 (diffusers)."""
    w = np.full(call.images, call.guidance_scale - 1.0, dtype=np.float32)
    return schedules.guidance_embedding(w, int(spec["shape"][-1]))


def text_embeds(spec: dict, call: ConditioningCall) -> np.ndarray:
    """SDXL's pooled text embedding, one row per image ([negatives, positives] under CFG)."""
    return np.repeat(to_host(call.pooled), call.images, axis=0)


def time_ids(spec: dict, call: ConditioningCall) -> np.ndarray:
    """SDXL's micro-conditioning as StableDiffusionXLImg2ImgPipeline._get_add_time_ids:
    original size, crop top-left, then the target size (the refiner: the aesthetic score).
    The negative row keeps the crop, except the refiner's, whose crop is (0, 0)."""
    micro, processed = call.micro, (call.height, call.width)
    original = micro.get("original_size") or processed
    crop = micro.get("crops_coords_top_left") or (0, 0)
    if call.requires_aesthetics_score:
        score = micro.get("aesthetic_score")
        negative_score = micro.get("negative_aesthetic_score")
        positive = [*original, *crop, 6.0 if score is None else score]
        negative = [*original, 0, 0, 2.5 if negative_score is None else negative_score]
    else:
        positive = negative = [*original, *crop, *(micro.get("target_size") or processed)]
    if len(positive) != int(spec["shape"][-1]):
        raise EngineError(
            f"the UNet takes {spec['shape'][-1]} time ids, but the manifest's "
            f"requires_aesthetics_score={call.requires_aesthetics_score} gives {len(positive)}: "
            "the engine folder is inconsistent; export it again"
        )
    rows = [negative] * call.images * call.cfg + [positive] * call.images
    return np.array(rows, dtype=np.float32)


CONDITIONING = {
    "timestep_cond": timestep_cond,
    "text_embeds": text_embeds,
    "time_ids": time_ids,
}


def extra_inputs(manifest: Manifest) -> dict:
    """The UNet's extra inputs (name -> spec), refused when one has no builder here."""
    unet_inputs = manifest.components["unet"]["inputs"]
    extra = [name for name in unet_inputs if name not in UNET_INPUTS]
    unknown = [name for name in extra if name not in CONDITIONING]
    if unknown:
        raise EngineError(
            f"the UNet takes {', '.join(unknown)}, which this fastimg cannot build: upgrade fastimg"
        )
    return {name: unet_inputs[name] for name in extra}


def build(specs: dict, calls: list[ConditioningCall], counts: list[int], cfg: bool) -> dict:
    """Each extra input's rows for a batch of requests (one ConditioningCall each)."""
    built = {}
    for name, make in CONDITIONING.items():
        if name in specs:
            rows = [make(specs[name], call) for call in calls]
            built[name] = stack(rows, counts, cfg, np)
    return built


def stack(parts: list, counts: list[int], cfg: bool, xp):
    """Per-request rows as one batch's; under CFG, rows that come as [negatives, positives]
    stay so: every request's negatives first, then every request's positives."""
    if len(parts) == 1:
        return parts[0]
    if cfg and all(len(part) == 2 * c for part, c in zip(parts, counts, strict=True)):
        halves = [part[:c] for part, c in zip(parts, counts, strict=True)]
        halves += [part[c:] for part, c in zip(parts, counts, strict=True)]
        return xp.concatenate(halves)
    return xp.concatenate(parts)


def check_sdxl_arguments(manifest: Manifest, given: dict) -> dict:
    """The SDXL-only arguments that are not None, checked and normalized; refused (naming the
    mismatch) where the folder is not SDXL, or is the base given the refiner's or the refiner
    given the base's."""
    given = {name: value for name, value in given.items() if value is not None}
    unknown = [name for name in given if name not in SDXL_ARGUMENTS]
    if unknown:
        raise InputError(f"unknown SDXL argument {', '.join(unknown)}")
    conditioning = manifest.text_conditioning
    if not conditioning:
        if given:
            family = manifest.model_family or "sd"
            raise InputError(
                f"{', '.join(given)} {'is an' if len(given) == 1 else 'are'} SDXL "
                f"argument{'s' * (len(given) > 1)}, but this engine folder holds a {family} "
                "model (the SD 1.x/2.x layout: one text encoder, no added conditioning): "
                "leave them out, or use an SDXL engine folder"
            )
        return {}
    refiner = bool(conditioning.get("requires_aesthetics_score"))
    wrong = [n for n in (BASE_ONLY if refiner else REFINER_ONLY) if n in given]
    if wrong:
        kind = "the SDXL refiner (requires_aesthetics_score)" if refiner else "SDXL base"
        other = "the base's target_size" if refiner else "the refiner's aesthetic scores"
        raise InputError(
            f"{', '.join(wrong)} does not apply to {kind}, whose UNet takes {other} "
            f"instead of it: leave it out"
        )
    if "prompt_2" in given and "text_encoder" not in manifest.text_encoders:
        log.warning("the SDXL refiner has one text encoder: prompt_2 is ignored (as diffusers)")
    return {name: BY_NAME[name].check(value) for name, value in given.items()}
