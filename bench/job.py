"""One img2img job, described once and run identically by every side of a benchmark."""

from dataclasses import asdict, dataclass
from pathlib import Path

from fastimg.cli import EXAMPLE_IMAGE
from fastimg.images import load_image


@dataclass(frozen=True)
class Job:
    """Input image, prompt and settings shared by diffusers and every fastimg backend."""

    size: int = 512
    steps: int = 4
    strength: float = 0.5
    guidance: float = 0.0
    sampler: str = "ddim"
    seed: int = 0
    prompt: str = "a watercolor painting of a cozy house at sunset"
    image: str = str(EXAMPLE_IMAGE)

    def load_image(self):
        """The input image, resized to size x size."""
        return load_image(Path(self.image)).resize((self.size, self.size))

    def unet_calls(self) -> int:
        """UNet evaluations per image (steps actually run at this strength)."""
        from fastimg.schedules import img2img_start

        return self.steps - img2img_start(self.steps, self.strength)

    def to_dict(self) -> dict:
        """Plain-data form, for the record and for the cold-start subprocess."""
        return asdict(self)
