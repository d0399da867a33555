"""One img2img call checked and ready to run (`Request`), and the small rules the pipeline's
stages share: where a call may stop, whose generator draws which rows, NaN checks."""

from dataclasses import dataclass

import numpy as np

from ..backends import Engines
from ..errors import Cancelled, EngineError
from ..lora.adapters import label_of
from . import schedules
from .control import Control
from .masks import Mask
from .rng import StackedGenerators, TorchCompatibleGenerator


def nan_error(stage: str, engines: Engines) -> EngineError:
    """The error for NaN or Inf in a stage's output, with the fix for its precision."""
    fix = (
        "run with --precision fp32 (the exact path)"
        if engines.precision != "fp32"
        else "the engine overflowed even in fp32: check the model, or export it again"
    )
    if engines.precision == "fp16":  # fp32 is refused on a folder that has no fp32 graphs
        fix += " (engines exported with --precision fp16: export them again without it first)"
    return EngineError(
        f"NaN or Inf appeared in the {stage} on {engines.backend} ({engines.precision}): {fix}"
    )


def check_finite(array, stage: str, engines: Engines):
    """`array`, or nan_error raised where it holds NaN or Inf."""
    if not bool(finite(array)):
        raise nan_error(stage, engines)
    return array


def finite(array):
    """Whether every element is finite, as a 0-d array (no host round trip on a GPU: CuPy
    takes NumPy's ufuncs); one pass and a boolean temporary, a quarter of the array's bytes."""
    return np.isfinite(array).all()


@dataclass(frozen=True)
class Request:
    """One call checked and ready to run; calls with the same `key` can share engine calls."""

    prompt: str
    negative_prompt: str | None
    micro: dict
    seed: int
    rng: TorchCompatibleGenerator
    pixels: np.ndarray
    count: int
    sampler: str
    plan: schedules.Plan
    strength: float
    steps: int
    guidance_scale: float
    cfg: bool
    control: Control | None = None
    mask: Mask | None = None
    loras: tuple = ()  # the LoRAs and scales it runs with, (name, scale) sorted
    vae_tile_size: int | None = None  # pixels a side of each decoder tile (None: whole)

    @property
    def key(self) -> tuple:
        """What calls batched together must share: the image size, the sampling, the control,
        whether a mask is given, the LoRAs, the VAE's tiles."""
        shared = (self.pixels.shape, self.sampler, self.steps, self.strength, self.guidance_scale)
        control = self.control and self.control.key
        return (*shared, control, self.mask is not None, self.loras, self.vae_tile_size)

    def labels(self, engines: Engines, model: dict) -> dict:
        """What each of its images is labelled with: its settings, what ran it, and `model`
        (the model's and any ControlNet's names)."""
        labels = {
            "fastimg:prompt": self.prompt,
            "fastimg:negative_prompt": self.negative_prompt or "",
            "fastimg:seed": self.seed,
            "fastimg:strength": self.strength,
            "fastimg:steps": self.steps,
            "fastimg:guidance": self.guidance_scale,
            "fastimg:scheduler": self.sampler,
            "fastimg:backend": engines.backend,
            "fastimg:precision": engines.precision,
            **model,
        }
        if engines.plan_set:
            labels["fastimg:plan_set"] = engines.plan_set
        if self.control is not None:
            labels.update(self.control.labels())
        if self.mask is not None:
            labels.update(self.mask.labels())
        if self.loras:
            labels["fastimg:loras"] = label_of(self.loras)
        if self.vae_tile_size is not None:
            labels["fastimg:vae_tile_size"] = self.vae_tile_size
        return labels


def stop_point(should_stop, stage: str) -> None:
    """Raise Cancelled where the caller no longer wants the call's images."""
    if should_stop is not None and should_stop():
        raise Cancelled(f"stopped before {stage}: the caller asked")


def generators(rngs: list, rows: list[int]):
    """One generator for one request, else each request's rows drawn from its own."""
    return rngs[0] if len(rngs) == 1 else StackedGenerators(rngs, rows)
