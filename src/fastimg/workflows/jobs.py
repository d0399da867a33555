"""The jobs of a batch: one img2img call each (an input, the call's settings, its outputs),
planned from inputs and a sweep of values, or read from a job file (workflows.jobfile).

    jobs = plan_sweep(sources, CallSettings("a watercolor"), Sweep(strength=(0.3, 0.6)))

naming.py names their outputs, runner.py checks them against the engines and runs them,
sheets.py draws their contact sheets.
"""

import itertools
import secrets
from dataclasses import dataclass, replace
from pathlib import Path

from ..diffusion.control import control_labels, controlnets_used, preprocessors_of
from ..diffusion.masks import mask_labels
from ..errors import InputError
from ..settings import BY_KEY, SEED_LIMIT, CallSettings
from .sources import Source

# The settings (by key) a sweep can vary, in the order names and contact sheets list them.
SWEPT = ("strength", "guidance", "steps", "seed")
MAX_JOBS = 100_000


@dataclass(frozen=True)
class Job:
    """One img2img call of a batch: an input, the call's settings, its output files."""

    source: Source
    call: CallSettings
    row: int | None = None  # its row in a job file (1: the first job)
    name: str | None = None  # its own output name (a job file's output column)
    outputs: tuple[Path, ...] = ()

    @property
    def label(self) -> str:
        """How messages name this job: its job-file row or its input, and its settings."""
        where = f"row {self.row}: {self.source.path}" if self.row else str(self.source.path)
        return f"{where} (strength {shown(self.call.strength)}, seed {self.call.seed})"

    @property
    def image_count(self) -> int:
        """How many images the job makes (diffusers' num_images_per_prompt)."""
        return self.call.num_images_per_prompt

    def value_by_key(self, key: str):
        """A setting's value by its job-file/CLI key (steps, guidance, sampler, ...)."""
        return self.call.value(BY_KEY[key].name)


@dataclass(frozen=True)
class Sweep:
    """Values to try in place of the call's own: each combination is one job per input.

    An empty tuple keeps the call's value; with no seeds here or in the call, each input draws a
    random one.
    """

    strength: tuple[float, ...] = ()
    guidance: tuple[float, ...] = ()
    steps: tuple[int, ...] = ()
    seeds: tuple[int, ...] | None = None


def variant_seeds(first: int, count: int) -> tuple[int, ...]:
    """`count` seeds from `first` on (first, first + 1, ...), as A1111 numbers a batch."""
    return tuple((first + k) % SEED_LIMIT for k in range(count))


def plan_sweep(sources: list[Source], call: CallSettings, sweep: Sweep = Sweep()) -> list[Job]:
    """One job per input and combination of the swept values, inputs outermost.

    Each swept value replaces `call`'s own. Without seeds each input draws its own random seed (the
    same one across its other swept values, so a strength sweep compares like with like).
    """
    strengths = sweep.strength or (call.strength,)
    guidances = sweep.guidance or (call.guidance_scale,)
    steps = sweep.steps or (call.num_inference_steps,)
    given_seeds = sweep.seeds or ((call.seed,) if call.seed is not None else None)
    combos = len(strengths) * len(guidances) * len(steps)
    total = len(sources) * combos * (len(given_seeds) if given_seeds else 1)
    if total > MAX_JOBS:
        raise InputError(f"this sweep makes {total} jobs, more than {MAX_JOBS}: split it")
    _refuse_shared_stems(sources)
    jobs = []
    for source in sources:
        seeds = given_seeds or (secrets.randbelow(SEED_LIMIT),)
        for strength, guidance, step_count, seed in itertools.product(
            strengths, guidances, steps, seeds
        ):
            values = dict(strength=strength, guidance_scale=guidance,
                          num_inference_steps=step_count, seed=seed)  # fmt: skip
            jobs.append(Job(source, call.with_values(**values)))
    return jobs


def draw_seeds(jobs: list[Job]) -> list[Job]:
    """`jobs` with a random seed drawn for each that has none."""
    return [
        job if job.call.seed is not None
        else replace(job, call=job.call.with_values(seed=secrets.randbelow(SEED_LIMIT)))
        for job in jobs
    ]  # fmt: skip


def _refuse_shared_stems(sources: list[Source]) -> None:
    """Refuse different inputs whose outputs would share names (x.png from two folders)."""
    seen: dict[tuple[Path, str], Path] = {}
    for source in sources:
        first = seen.setdefault((source.subfolder, source.path.stem), source.path)
        if first != source.path:
            raise InputError(
                f"several inputs are named {source.path.stem} ({first}, {source.path}): their "
                "outputs would collide; transform them in separate runs or into separate "
                "folders (or pass their folder, which keeps subfolders apart)"
            )


def one_image_size(jobs: list[Job], resized: bool) -> bool:
    """Whether every call of `jobs` gives the engines the same shapes: one input (or every
    input resized to one size), and one prompt, images per call and guidance on or off (a CFG
    batch of 2) throughout. Such a run is what static shapes pay for: one compile."""
    inputs = {job.source.path for job in jobs}
    calls = {
        (job.call.prompt, job.call.negative_prompt, job.call.num_images_per_prompt,
         job.call.guidance_scale > 1)
        for job in jobs
    }  # fmt: skip
    return len(calls) <= 1 and (resized or len(inputs) <= 1)


def varying(jobs: list[Job]) -> tuple[str, ...]:
    """The swept settings that take more than one value among `jobs`, in SWEPT order."""
    return tuple(key for key in SWEPT if len({job.value_by_key(key) for job in jobs}) > 1)


def shown(value) -> str:
    """A value as job labels, output names and contact sheets write it: 0.5, not 0.500000."""
    return format(value, "g") if isinstance(value, float) else str(value)


def setting_labels(call: CallSettings, sampler: str) -> dict:
    """The fastimg:* labels, as the pipeline writes them, of an image of `call` on `sampler`."""
    labels = {
        "fastimg:prompt": call.prompt,
        "fastimg:negative_prompt": call.negative_prompt or "",
        "fastimg:seed": call.seed,
        "fastimg:strength": float(call.strength),
        "fastimg:steps": call.num_inference_steps,
        "fastimg:guidance": float(call.guidance_scale),
        "fastimg:scheduler": sampler,
    }
    if call.control_image is not None or any(preprocessors_of(call)):
        scale, start, end = (call.controlnet_conditioning_scale, call.control_guidance_start,
                             call.control_guidance_end)  # fmt: skip
        count = controlnets_used(call)
        labels.update(control_labels(call.control_preprocess, scale, start, end, count))
    return {**labels, **mask_labels(call)}
