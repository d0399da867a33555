"""Per-stage timing: wrap each engine (fastimg) or module method (diffusers) with a stopwatch."""

import time
from collections import defaultdict
from functools import wraps

STAGES = ("text_encoder", "vae_encoder", "unet", "vae_decoder")
# A job with a ControlNet (fastimg bench --controlnet) also has this stage: every ControlNet call.
CONTROLNET = "controlnet"


class StageClock:
    """Collects (stage, seconds) for one call at a time."""

    def __init__(self):
        self.calls: dict[str, list[float]] = defaultdict(list)

    def reset(self) -> None:
        """Forget what the previous call recorded."""
        self.calls = defaultdict(list)

    def timed(self, stage: str, function):
        """`function`, recording each call's duration under `stage`."""

        @wraps(function)
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.calls[stage].append(time.perf_counter() - start)

        return wrapper

    def totals(self, end_to_end: float) -> dict:
        """Seconds per stage for the last call, UNet calls listed, and the time outside them."""
        stages = {stage: sum(self.calls.get(stage, [])) for stage in STAGES}
        if CONTROLNET in self.calls:
            stages[CONTROLNET] = sum(self.calls[CONTROLNET])
        stages["unet_calls"] = list(self.calls.get("unet", []))
        timed = sum(stages[s] for s in STAGES) + stages.get(CONTROLNET, 0.0)
        stages["overhead"] = end_to_end - timed
        return stages


class TimedSession:
    """A fastimg engine session whose run() is timed under its component name.

    GPU sessions are timed with CUDA events on their stream (the device time of the engine,
    not the host time of queueing it); CPU sessions with the wall clock.
    """

    def __init__(self, session, stage: str, clock: StageClock):
        self.input_names, self.output_names = session.input_names, session.output_names
        self.device = getattr(session, "device", "cpu")
        if hasattr(session, "stream"):
            self.stream = session.stream
        if self.device == "cuda":
            self.run = _cuda_timed(stage, session, clock)
        else:
            self.run = clock.timed(stage, session.run)


def _cuda_timed(stage: str, session, clock: StageClock):
    import cupy

    def run(feeds):
        stream = getattr(session, "stream", None) or cupy.cuda.get_current_stream()
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record(stream)
        out = session.run(feeds)
        end.record(stream)
        end.synchronize()
        clock.calls[stage].append(cupy.cuda.get_elapsed_time(start, end) / 1000.0)
        return out

    return run


def stage_of(component: str) -> str:
    """The stage a component's time counts under: SDXL's two text encoders share one; every
    ControlNet counts as the controlnet stage, the UNet taking their residuals as the unet."""
    if component.startswith("text_encoder"):
        return "text_encoder"
    if component.startswith("controlnet"):
        return CONTROLNET
    return "unet" if component == "unet_control" else component


def time_fastimg(pipe, clock: StageClock) -> None:
    """Time every engine call of a fastimg pipeline."""
    pipe.wrap_sessions(lambda name, session: TimedSession(session, stage_of(name), clock))


def diffusers_stages(pipe) -> list[tuple[str, object, str]]:
    """(stage, object, method name) for each part of a diffusers pipeline that runs a stage;
    SDXL's text encoders both count as the text_encoder stage (the refiner has only one)."""
    encoders = [
        getattr(pipe, name, None) for name in ("text_encoder", "text_encoder_2")
    ]  # fmt: skip
    return [
        *(("text_encoder", encoder, "forward") for encoder in encoders if encoder is not None),
        ("unet", pipe.unet, "forward"),
        ("vae_encoder", pipe.vae, "encode"),
        ("vae_decoder", pipe.vae, "decode"),
        *([(CONTROLNET, pipe.controlnet, "forward")] if getattr(pipe, "controlnet", None) else []),
    ]


def time_diffusers(pipe, clock: StageClock) -> None:
    """Time the text encoders, VAE encode/decode and UNet calls of a diffusers pipeline."""
    for stage, owner, name in diffusers_stages(pipe):
        setattr(owner, name, clock.timed(stage, getattr(owner, name)))
