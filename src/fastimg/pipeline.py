"""img2img over an engine folder: prompt -> text engine, image -> VAE encoder -> noise -> sampler
loop over the UNet -> VAE decoder -> images. Each stage is its own method so it can be timed."""

import contextlib
import logging
import math
import secrets
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from . import images, samplers, schedules
from .arrays import PredrawnNoise, namespace, to_host
from .backends import load_sessions
from .backends.select import resolve
from .errors import EngineError, InputError
from .manifest import COMPONENTS, Manifest, load_manifest
from .rng import TorchCompatibleGenerator
from .tokenizer import PromptTokenizer

log = logging.getLogger("fastimg")

MAX_IMAGES = 64
PROMPT_CACHE_SIZE = 32
OPENVINO_CACHE = "openvino_cache"
# Backends that compile the ONNX graphs keep what they compiled beside the engines.
CACHES = {"openvino": OPENVINO_CACHE, "onnxruntime-tensorrt": "ort_tensorrt_cache"}


def _nan_error(stage: str) -> EngineError:
    return EngineError(
        f"NaN or Inf appeared in the {stage}: the engine overflowed (fp16 VAEs often do); "
        "export (or build) with fp32, or run with --precision fp32"
    )


def _check_finite(array, stage: str):
    if not bool(_finite(array)):
        raise _nan_error(stage)
    return array


def _finite(array):
    """Whether every element is finite, as a 0-d array (no host round trip on a GPU)."""
    return (array == array).all() & (abs(array) != float("inf")).all()


def resolve_sampler(manifest: Manifest, scheduler: str | None) -> str:
    """The sampler to run: the one asked for, else the model's own, else ddim with a warning."""
    if scheduler is not None:
        if scheduler not in schedules.SAMPLERS:
            raise InputError(
                f"unknown scheduler {scheduler!r}: choose one of {', '.join(schedules.SAMPLERS)}"
            )
        return scheduler
    own = schedules.default_sampler(manifest.scheduler)
    if own is None:
        log.warning(
            "the model's scheduler %s has no fastimg sampler; using ddim with its config "
            "(choose one with --scheduler)",
            manifest.scheduler.get("_class_name"),
        )
        return "ddim"
    return own


class Img2ImgPipeline:
    """Stable Diffusion img2img on exported engines, called like diffusers' pipeline."""

    def __init__(
        self,
        manifest: Manifest,
        backend: str = "auto",
        precision: str = "auto",
        threads: int | None = None,
    ):
        self.manifest = manifest
        self.backend, self.precision = resolve(backend, precision, manifest)
        self.tokenizer = PromptTokenizer(manifest)
        cache_dir = None
        if self.backend in CACHES:
            cache_dir = _writable_cache(manifest.folder / CACHES[self.backend])
        self.sessions = load_sessions(
            self.backend,
            manifest,
            COMPONENTS,
            threads=threads,
            precision=self.precision,
            cache_dir=cache_dir,
        )
        self._prompt_cache: dict[tuple[str, str | None, bool], np.ndarray] = {}
        self.device = getattr(self.sessions["unet"], "device", "cpu")
        self.xp = namespace(self.device)
        self.stream = getattr(self.sessions["unet"], "stream", None)

    @classmethod
    def from_engines(
        cls,
        folder: str | Path,
        backend: str = "auto",
        precision: str = "auto",
        threads: int | None = None,
    ) -> "Img2ImgPipeline":
        """Load every engine of an exported folder on the backend asked for (auto: fastest)."""
        return cls(load_manifest(folder), backend=backend, precision=precision, threads=threads)

    def encode_prompt(self, prompt: str, negative_prompt: str | None, cfg: bool) -> np.ndarray:
        """Text embeddings, [negative, positive] stacked on the batch axis under CFG; cached."""
        key = (prompt, (negative_prompt or "") if cfg else None, cfg)
        if key not in self._prompt_cache:
            prompts = [negative_prompt or "", prompt] if cfg else [prompt]
            ids = self.tokenizer(prompts)
            out = self.sessions["text_encoder"].run({"input_ids": ids})["last_hidden_state"]
            if len(self._prompt_cache) >= PROMPT_CACHE_SIZE:
                self._prompt_cache.pop(next(iter(self._prompt_cache)))
            self._prompt_cache[key] = out.astype(np.float32, copy=True)
        return self._prompt_cache[key]

    def encode_image(self, pixels: np.ndarray, rng: TorchCompatibleGenerator) -> np.ndarray:
        """Scaled latent sample of the image: mean + std * eps from the encoder's moments."""
        xp = self.xp
        moments = self.sessions["vae_encoder"].run({"sample": pixels})["latent_parameters"]
        mean, logvar = xp.split(_check_finite(moments, "VAE encoder output"), 2, axis=1)
        std = xp.exp(np.float32(0.5) * logvar.clip(-30.0, 20.0))
        z = mean + std * xp.asarray(rng.randn(mean.shape))
        return z * np.float32(self.manifest.vae_scaling_factor)

    def denoise(
        self,
        latents: np.ndarray,
        embeddings: np.ndarray,
        plan: schedules.Plan,
        guidance_scale: float,
        rng: TorchCompatibleGenerator,
        callback: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Noise the latents to the plan's first timestep, then run the sampler over the UNet."""
        xp, unet = self.xp, self.sessions["unet"]
        cfg = embeddings.shape[0] == 2 * latents.shape[0]
        x = samplers.add_noise(latents, xp.asarray(rng.randn(latents.shape)), plan)
        if xp is not np:  # the loop's noise goes to the device in one copy, drawn in order
            rng = PredrawnNoise(rng, latents.shape, samplers.noise_draws(plan), xp)
        finite = []  # per-step flags, read once after the loop: no host sync inside it

        def denoise(x, i: int):
            x_in = x * np.float32(plan.input_scale[i])
            if cfg:
                x_in = xp.concatenate([x_in, x_in])
            t = xp.full(x_in.shape[0], plan.timesteps[i], dtype=np.float32)
            out = unet.run({"sample": x_in, "timestep": t, "encoder_hidden_states": embeddings})
            out = out["out_sample"]
            finite.append(_finite(out))
            if cfg:
                uncond, text = xp.split(out, 2)
                out = uncond + np.float32(guidance_scale) * (text - uncond)
            if callback is not None:
                callback(i + 1, plan.steps)
            return samplers.predict(out, x, plan, i)

        x = samplers.SAMPLE[plan.sampler](denoise, x, plan, rng)
        for i, ok in enumerate(finite):
            if not bool(ok):
                raise _nan_error(f"UNet output at step {i + 1}")
        return x

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """uint8 NHWC images from latents."""
        scaled = latents / np.float32(self.manifest.vae_scaling_factor)
        pixels = self.sessions["vae_decoder"].run({"latent_sample": scaled})["sample"]
        return to_host(images.to_uint8(_check_finite(pixels, "decoded image")))

    def __call__(
        self,
        prompt: str,
        image: Image.Image | str | Path,
        strength: float = 0.8,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: str | None = None,
        num_images_per_prompt: int = 1,
        seed: int | None = None,
        scheduler: str | None = None,
        callback: Callable[[int, int], None] | None = None,
    ) -> list[Image.Image]:
        """Transform `image` toward `prompt`; the same seed gives diffusers' image for it."""
        _validate(prompt, negative_prompt, guidance_scale, num_images_per_prompt, seed)
        if isinstance(image, str | Path):
            image = images.load_image(image)
        if not isinstance(image, Image.Image):
            raise InputError(f"image must be a PIL image or a path, got {type(image).__name__}")
        sampler = resolve_sampler(self.manifest, scheduler)
        plan = schedules.make_plan(self.manifest.scheduler, sampler, num_inference_steps, strength)
        seed = secrets.randbelow(2**32) if seed is None else seed
        rng = TorchCompatibleGenerator(seed)
        cfg = guidance_scale > 1.0
        # GPU backends run all of the call's array work on their stream, in order.
        with self.stream if self.stream is not None else contextlib.nullcontext():
            embeddings = self.encode_prompt(prompt, negative_prompt, cfg)
            embeddings = self.xp.repeat(embeddings, num_images_per_prompt, axis=0)
            pixels = images.to_pixels(image, self.manifest.vae_scale_factor, self.manifest.max_side)
            z = self.encode_image(pixels, rng)
            z = self.xp.repeat(z, num_images_per_prompt, axis=0)
            latents = self.denoise(z, embeddings, plan, guidance_scale, rng, callback)
            return [Image.fromarray(a) for a in self.decode(latents)]


def _writable_cache(folder: Path) -> Path | None:
    """`folder`, created if need be, or None where the engine folder is read-only."""
    try:
        folder.mkdir(exist_ok=True)
    except OSError:
        log.info("engine folder is read-only; compiled models will not be cached")
        return None
    return folder


def _validate(prompt, negative_prompt, guidance_scale, num_images, seed) -> None:
    if not isinstance(prompt, str):
        raise InputError(f"prompt must be a string, got {type(prompt).__name__}")
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        raise InputError("negative_prompt must be a string")
    for text in (prompt, negative_prompt or ""):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(
                f"prompt {text!r} is not valid Unicode text (undecodable bytes?): pass it as UTF-8"
            ) from None
    if not (isinstance(guidance_scale, int | float) and math.isfinite(guidance_scale)):
        raise InputError(f"guidance must be a finite number, got {guidance_scale!r}")
    if guidance_scale < 0:
        raise InputError(f"guidance must be at least 0, got {guidance_scale}")
    if not (isinstance(num_images, int) and 1 <= num_images <= MAX_IMAGES):
        raise InputError(f"number of images must be between 1 and {MAX_IMAGES}, got {num_images}")
    if seed is not None and not (isinstance(seed, int) and 0 <= seed < 2**32):
        raise InputError(f"seed must be an integer in [0, 2**32), got {seed!r}")
