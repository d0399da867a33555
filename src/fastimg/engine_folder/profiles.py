"""Shape profiles for TensorRT engines: the image sizes and batch an engine is built to take.

A profile is (min, opt, max) for height, width and images per call; static when the three
agree. From it follow the exact tensor shapes of each component's inputs, which the builder
gives TensorRT and the runtime checks a request against before running anything.
"""

import re
from dataclasses import asdict, dataclass

from ..errors import InputError

Range = tuple[int, int, int]
TEXT_LENGTH = 77


def parse_range(text: str, multiple: int = 1, name: str = "value") -> Range:
    """'512' -> (512, 512, 512); '256-768' -> (256, opt, 768); '256:512:768' explicit.

    The optimum of a range defaults to its lower end rounded up to `multiple` for sizes
    (the common case is the smallest) -- pass three numbers to choose it.
    """
    parts = re.split(r"[-:]", text.strip()) if text.strip() else []
    if not parts or not all(p.isdigit() for p in parts) or len(parts) > 3:
        raise InputError(f"{name} {text!r} must be N, MIN-MAX or MIN:OPT:MAX (whole numbers)")
    numbers = [int(p) for p in parts]
    if len(numbers) == 1:
        low = opt = high = numbers[0]
    elif len(numbers) == 2:
        low, high = numbers
        opt = low
    else:
        low, opt, high = numbers
    if not 0 < low <= opt <= high:
        raise InputError(f"{name} {text!r} must satisfy 0 < min <= opt <= max")
    if multiple > 1 and any(n % multiple for n in (low, opt, high)):
        raise InputError(f"{name} {text!r}: every size must be a multiple of {multiple}")
    return low, opt, high


@dataclass(frozen=True)
class Profile:
    """Image height and width in pixels and images per call, each as (min, opt, max)."""

    height: Range
    width: Range
    batch: Range = (1, 1, 1)

    @property
    def static(self) -> bool:
        """Whether every dimension is fixed (then CUDA graphs can replay the engines)."""
        return all(r[0] == r[2] for r in (self.height, self.width, self.batch))

    def key(self) -> str:
        """A short, filesystem-safe name of the profile, part of the engine key."""

        def part(r: Range) -> str:
            return str(r[0]) if r[0] == r[2] else f"{r[0]}-{r[1]}-{r[2]}"

        return f"h{part(self.height)}_w{part(self.width)}_b{part(self.batch)}"

    def to_dict(self) -> dict:
        """Plain data for the manifest."""
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "Profile":
        """The inverse of to_dict."""
        return cls(**{k: tuple(v) for k, v in data.items()})

    def admits(self, height: int, width: int, batch: int) -> bool:
        """Whether a request of that size and batch lies inside the profile."""
        return all(
            r[0] <= v <= r[2]
            for r, v in ((self.height, height), (self.width, width), (self.batch, batch))
        )


def input_shapes(profile: Profile, manifest) -> dict[str, dict[str, tuple[tuple, tuple, tuple]]]:
    """component -> input -> (min, opt, max) shapes, as the pipeline will call each engine.

    Each text encoder sees 1 or 2 prompts (2 under guidance), the VAE encoder one image, the
    UNet every image twice under guidance (with SDXL's text_embeds and time_ids a row per
    UNet image), the VAE decoder every image.
    """
    factor = manifest.vae_scale_factor
    channels, unet_channels = manifest.latent_channels, manifest.unet_in_channels
    hidden = manifest.components["unet"]["inputs"]["encoder_hidden_states"]["shape"][-1]
    h, w, b = profile.height, profile.width, profile.batch
    lat_h, lat_w = tuple(v // factor for v in h), tuple(v // factor for v in w)

    def shapes(make):
        return tuple(make(k) for k in range(3))

    unet_batch = (b[0], 2 * b[1], 2 * b[2])
    unet = {
        "sample": shapes(lambda k: (unet_batch[k], unet_channels, lat_h[k], lat_w[k])),
        "timestep": shapes(lambda k: (unet_batch[k],)),
        "encoder_hidden_states": shapes(lambda k: (unet_batch[k], TEXT_LENGTH, hidden)),
    }
    for name, spec in manifest.components["unet"]["inputs"].items():
        if name not in unet:  # extra conditioning, one row per image: [batch, n, ...]
            rest = tuple(spec["shape"][1:])
            unet[name] = shapes(lambda k, rest=rest: (unet_batch[k], *rest))
    text = {"input_ids": ((1, TEXT_LENGTH), (2, TEXT_LENGTH), (2, TEXT_LENGTH))}
    return {
        **{encoder: text for encoder in manifest.text_encoders},
        "vae_encoder": {"sample": shapes(lambda k: (1, 3, h[k], w[k]))},
        "unet": unet,
        "vae_decoder": {"latent_sample": shapes(lambda k: (b[k], channels, lat_h[k], lat_w[k]))},
    }
