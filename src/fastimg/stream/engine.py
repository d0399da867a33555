"""TEMPORARY stand-in for the stream engine (the engine helper's module replaces this file at
merge): one pipeline call per frame with the settings, so that `fastimg stream` runs end to end."""

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class StreamSettings:
    """What every frame is transformed with (the engine's contract)."""

    prompt: str
    negative_prompt: str = ""
    strength: float = 0.5
    steps: int = 2
    guidance: float = 0.0
    sampler: str | None = None
    seed: int = 0
    width: int | None = None
    height: int | None = None
    stream_batch: bool = False
    rcfg: str = "none"
    similarity: float | None = None
    max_skip: int = 10
    feedback: float = 0.0


@dataclass(frozen=True)
class StreamFrame:
    """One output: its image, the tag of the input frame it came from, whether it was reused."""

    image: object
    tag: object
    skipped: bool


class StreamEngine:
    """One pipeline call per pushed frame (no stream batch, no similarity filter)."""

    def __init__(self, pipeline, settings: StreamSettings):
        self.pipeline, self._settings = pipeline, settings

    def push(self, image, tag: object) -> StreamFrame | None:
        """Transform one input frame; its output is ready at once."""
        s = self._settings
        if s.width is not None and s.height is not None:
            image = image.resize((s.width, s.height))
        (out,) = self.pipeline(
            s.prompt,
            image,
            strength=s.strength,
            num_inference_steps=s.steps,
            guidance_scale=s.guidance,
            negative_prompt=s.negative_prompt or None,
            seed=s.seed,
            scheduler=s.sampler,
        )
        return StreamFrame(out, tag, False)

    def flush(self) -> list[StreamFrame]:
        """Nothing is in flight."""
        return []

    def update(self, **changes) -> None:
        """Change settings between frames."""
        self._settings = replace(self._settings, **changes)

    @property
    def settings(self) -> StreamSettings:
        """The settings frames are transformed with now."""
        return self._settings
