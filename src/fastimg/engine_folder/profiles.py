"""Shape profiles for TensorRT engines: the image sizes and batch an engine is built to take.

A profile is (min, opt, max) for height, width and images per call; static when the three
agree. From it follow the exact tensor shapes of each component's inputs, which the builder
gives TensorRT and the runtime checks a request against before running anything.
"""

import re
from dataclasses import asdict, dataclass

from ..errors import InputError, ManifestError

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
    UNet image), the VAE decoder every image. Each ControlNet sees the UNet's rows with its
    control image at the image's size; the UNet taking their residuals, the UNet's rows and
    each residual at its level's latent size (the manifest's latent_height_divN: rounded up).
    The depth model takes its processor's fixed size. Every other input is sized as the
    manifest gives it: an inpainting UNet's 9-channel sample, an LCM's timestep_cond.
    """
    factor = manifest.vae_scale_factor
    h, w, b = profile.height, profile.width, profile.batch
    channels = manifest.latent_channels
    lat_h, lat_w = tuple(v // factor for v in h), tuple(v // factor for v in w)
    unet_rows = {  # the symbolic dimensions of the components run per UNet row
        "batch": (b[0], 2 * b[1], 2 * b[2]),
        "sequence": (TEXT_LENGTH,) * 3,
        "latent_height": lat_h,
        "latent_width": lat_w,
        "height": h,
        "width": w,
    }
    text = {"input_ids": ((1, TEXT_LENGTH), (2, TEXT_LENGTH), (2, TEXT_LENGTH))}
    shapes = {
        **{encoder: text for encoder in manifest.text_encoders},
        "vae_encoder": {"sample": _ranges([(1,) * 3, (3,) * 3, h, w])},
        "vae_decoder": {"latent_sample": _ranges([b, (channels,) * 3, lat_h, lat_w])},
    }
    for component in ("unet", *manifest.control_components, *manifest.depth_components):
        inputs = manifest.components[component]["inputs"]
        shapes[component] = {
            name: _sized(spec["shape"], unet_rows, f"{component}'s input {name}")
            for name, spec in inputs.items()
        }
    return shapes


def is_static_input(spec: dict) -> bool:
    """Whether a manifest input has fixed dimensions only (a TensorRT profile leaves it out)."""
    return all(isinstance(d, int) for d in spec["shape"])


def _ranges(dims: list[Range]) -> tuple[tuple, tuple, tuple]:
    """Per-dimension (min, opt, max) as (min shape, opt shape, max shape)."""
    return tuple(tuple(r[k] for r in dims) for k in range(3))


def divided_dimension(name: str) -> tuple[str, int | None]:
    """A named dimension's base and divisor: ('latent_height', 4) for 'latent_height_div4' (a
    ControlNet residual's side), (name, 1) for a plain one, (base, None) for a bad divisor."""
    base, _, divisor = name.partition("_div")
    if not divisor:
        return name, 1
    return base, int(divisor) if divisor.isdigit() else None


def divided(size: int, divisor: int) -> int:
    """A side of `size` divided by `divisor`, rounded up, as a stride-2 convolution with padding
    halves a side."""
    return -(-size // divisor)


def _sized(shape: list, symbols: dict[str, Range], what: str) -> tuple[tuple, tuple, tuple]:
    """A manifest shape's (min, opt, max): numbers as they are, named dimensions from
    `symbols` (NAME_divN: NAME's sizes divided by N, rounded up: divided)."""
    dims = []
    for dim in shape:
        if isinstance(dim, int):
            dims.append((dim,) * 3)
            continue
        base, step = divided_dimension(dim)
        if base not in symbols or step is None:
            raise ManifestError(
                f"{what} has a dimension {dim!r} that fastimg cannot size for a TensorRT "
                "profile: export the folder again with this fastimg"
            )
        dims.append(tuple(divided(v, step) for v in symbols[base]))
    return _ranges(dims)
