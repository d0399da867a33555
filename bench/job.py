"""One img2img job, described once and run identically by every side of a benchmark."""

from dataclasses import asdict, dataclass
from pathlib import Path

from fastimg.media.images import EXAMPLE_IMAGE, load_image


@dataclass(frozen=True)
class BenchJob:
    """Input image, prompt and settings shared by diffusers and every fastimg backend."""

    size: int = 512
    steps: int = 4
    strength: float = 0.5
    guidance: float = 0.0
    sampler: str = "ddim"
    seed: int = 0
    prompt: str = "a watercolor painting of a cozy house at sunset"
    image: str = str(EXAMPLE_IMAGE)
    batch: int = 1  # images per call (num_images_per_prompt), as a stream batch
    vae: str | None = None  # a VAE folder in place of the model's own, on both sides
    controlnet: str | None = None  # a ControlNet folder both sides run (its control image:
    # the input's scribble, control_image)

    def load_image(self):
        """The input image, resized to size x size."""
        return load_image(Path(self.image)).resize((self.size, self.size))

    def control_image(self):
        """The ControlNet's control image: the input image's scribble (dark strokes as white
        lines), the same pixels on every side; None without a ControlNet."""
        if self.controlnet is None:
            return None
        from fastimg.media.control_images import scribble

        return scribble(self.load_image())

    def unet_calls(self, distilled: bool = False) -> int:
        """UNet evaluations per call (steps actually run at this strength; an LCM-distilled
        model on the lcm sampler runs every step, the strength cutting its schedule)."""
        from fastimg.diffusion.schedules import img2img_start

        if distilled and self.sampler == "lcm":
            return self.steps
        return self.steps - img2img_start(self.steps, self.strength)

    def to_dict(self) -> dict:
        """Plain-data form, for the record and for the cold-start subprocess."""
        return asdict(self)
