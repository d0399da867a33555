"""img2img over an engine folder: prompt -> text engine, image -> VAE encoder -> noise -> sampler
loop over the UNet -> VAE decoder -> images. Each stage is its own method so it can be timed.

One pipeline may be called from many threads at once: each call has its own generator and
arrays, the prompt cache is locked, and each backend keeps what it cannot run twice at once
behind a pool or a lock of its own. With TensorRT the plan set is chosen per call, by the
image's size, the batch and the precision; `auto` falls back to the next backend (saying why)
for a call that no plan set fits.
"""

import logging
import math
import numbers
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..backends import CACHES, GPU_BACKENDS, SHAPES, Engines, graph_variant, load_engines
from ..backends.select import resolve
from ..engine_folder.manifest import DEFAULT_MAX_SIDE, Manifest, load_manifest
from ..errors import EngineError, InputError
from ..media import images
from ..settings import BASE_ONLY, REFINER_ONLY, SDXL_ARGUMENTS
from . import memory, samplers, schedules
from .arrays import PredrawnNoise, namespace, to_host
from .rng import StackedGenerators, TorchCompatibleGenerator
from .tokenizer import PromptTokenizer, quote

log = logging.getLogger("fastimg")

MAX_IMAGES = 64
# The text encoder reads 77 tokens (a few hundred characters); longer prompts are cut, and a
# prompt beyond this is refused before it costs memory, time and log space.
MAX_PROMPT_CHARS = 20_000
PROMPT_CACHE_SIZE = 32
OPENVINO_CACHE = CACHES["openvino"]
# TensorRT plan sets kept loaded at once (each holds its engines and activation memory).
MAX_PLAN_SETS = 2


def _nan_error(stage: str, engines: Engines) -> EngineError:
    fix = (
        "run with --precision fp32 (the exact path)"
        if engines.precision != "fp32"
        else "the engine overflowed even in fp32: check the model, or export it again"
    )
    return EngineError(
        f"NaN or Inf appeared in the {stage} on {engines.backend} ({engines.precision}): {fix}"
    )


def _check_finite(array, stage: str, engines: Engines):
    if not bool(_finite(array)):
        raise _nan_error(stage, engines)
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


# Inputs every UNet takes; anything else it lists is extra conditioning, built by CONDITIONING.
UNET_INPUTS = ("sample", "timestep", "encoder_hidden_states")


@dataclass(frozen=True)
class Call:
    """What the UNet's extra conditioning is built from, for one call."""

    images: int
    guidance_scale: float
    cfg: bool = False
    height: int = 0
    width: int = 0
    pooled: np.ndarray | None = None  # SDXL's pooled text embeddings: [negative, positive]
    micro: dict = field(default_factory=dict)  # SDXL's size, crop and aesthetic arguments
    requires_aesthetics_score: bool = False


def _guidance_cond(spec: dict, call: Call) -> np.ndarray:
    """An LCM-distilled UNet's timestep_cond: the embedding of w = guidance - 1 (diffusers)."""
    w = np.full(call.images, call.guidance_scale - 1.0, dtype=np.float32)
    return schedules.guidance_embedding(w, int(spec["shape"][-1]))


def _text_embeds(spec: dict, call: Call) -> np.ndarray:
    """SDXL's pooled text embedding, one row per image ([negatives, positives] under CFG)."""
    return np.repeat(to_host(call.pooled), call.images, axis=0)


def _time_ids(spec: dict, call: Call) -> np.ndarray:
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
    "timestep_cond": _guidance_cond,
    "text_embeds": _text_embeds,
    "time_ids": _time_ids,
}


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

    @property
    def key(self) -> tuple:
        """What calls batched together must share: the image size and the sampling."""
        return (self.pixels.shape, self.sampler, self.steps, self.strength, self.guidance_scale)


def _stack(parts: list, counts: list[int], cfg: bool, xp):
    """Per-request rows as one batch's; under CFG, rows that come as [negatives, positives]
    stay so: every request's negatives first, then every request's positives."""
    if len(parts) == 1:
        return parts[0]
    if cfg and all(len(part) == 2 * c for part, c in zip(parts, counts, strict=True)):
        halves = [part[:c] for part, c in zip(parts, counts, strict=True)]
        halves += [part[c:] for part, c in zip(parts, counts, strict=True)]
        return xp.concatenate(halves)
    return xp.concatenate(parts)


def _scratch(backend: str, precision: str) -> str | None:
    """The graph whose weights `backend` sets up per-call scratch memory for (OpenVINO: the
    int8 UNet's under int8, the standard graphs' otherwise); None for the other backends."""
    return graph_variant(backend, precision) if backend == "openvino" else None


def _generators(rngs: list, rows: list[int]):
    """One generator for one request, else each request's rows drawn from its own."""
    return rngs[0] if len(rngs) == 1 else StackedGenerators(rngs, rows)


def describe(backend: str, precision: str) -> str:
    """What a run on this backend and precision promises, in one line."""
    if precision == "fp32":
        return f"running on {backend} (fp32): the exact path, matching diffusers"
    return (
        f"running on {backend} ({precision}): the fast path, close to but not exactly "
        "diffusers' output (--precision fp32 is the exact path)"
    )


class Img2ImgPipeline:
    """Stable Diffusion img2img on exported engines, called like diffusers' pipeline.

    `backend`/`precision` "auto" pick the fastest here (fp32 is the exact path, matching
    diffusers; bf16 and fp16 are fast and close); `max_concurrency` is how many engine runs
    may overlap per component when threads share the pipeline; `device` is the CUDA device
    index for the GPU backends (default: the current one); `shapes` is whether OpenVINO also
    compiles each call's exact shapes ("static"; "auto": from a shape's second call on).
    """

    def __init__(
        self,
        manifest: Manifest,
        backend: str = "auto",
        precision: str = "auto",
        threads: int | None = None,
        max_concurrency: int = 1,
        device: int | None = None,
        shapes: str = "dynamic",
    ):
        if not (isinstance(max_concurrency, int) and max_concurrency >= 1):
            raise InputError(
                f"max_concurrency must be a whole number >= 1, got {max_concurrency!r}"
            )
        if device is not None and not (isinstance(device, int) and device >= 0):
            raise InputError(f"device must be a CUDA device index (0, 1, ...), got {device!r}")
        if shapes not in SHAPES:
            raise InputError(f"shapes must be one of {', '.join(SHAPES)}, got {shapes!r}")
        self.manifest = manifest
        self.backend, self.precision = resolve(backend, precision, manifest, device=device)
        self._auto, self._asked_precision = backend == "auto", precision
        if self.backend in GPU_BACKENDS and device is None:
            from ..gpu import current_device

            device = current_device()  # one device for plans, caches and buffers alike
        self._options = {"threads": threads, "max_concurrency": max_concurrency, "device": device}
        self.shapes = shapes
        self.tokenizers = {e: PromptTokenizer(manifest, e) for e in manifest.text_encoders}
        self.tokenizer = next(iter(self.tokenizers.values()))
        unet_inputs = manifest.components["unet"]["inputs"]
        extra = [name for name in unet_inputs if name not in UNET_INPUTS]
        unknown = [name for name in extra if name not in CONDITIONING]
        if unknown:
            raise EngineError(
                f"the UNet takes {', '.join(unknown)}, which this fastimg cannot build: "
                "upgrade fastimg"
            )
        self.conditioning = {name: unet_inputs[name] for name in extra}
        # An LCM-distilled UNet is guided by its timestep_cond, not by a CFG batch.
        self.distilled = "timestep_cond" in self.conditioning
        self._lock = threading.Lock()  # the prompt cache and the loaded engines
        self._loading = threading.Lock()  # one plan set loads at a time, outside self._lock
        self._prompt_cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
        # Per loaded engines, the estimated bytes of the largest call that ran on them: the
        # backends keep that memory for the next call (OpenVINO's scratch, ONNX Runtime's
        # arena), so it is no longer free, yet theirs to reuse.
        self._kept: dict[str, int] = {}
        self._loaded: OrderedDict[str | None, Engines] = OrderedDict()
        self._fallback: Engines | None = None
        self._wrap: Callable[[str, object], object] | None = None
        if self.backend != "tensorrt":  # TensorRT loads the plan set each call needs
            engines = self._loaded[None] = self._load(self.backend, self.precision)
            if engines.precision != self.precision:
                log.warning(
                    "%s was asked for, but %s compiled %s on this machine (the CPU has no "
                    "native %s)",
                    self.precision,
                    self.backend,
                    engines.precision,
                    self.precision,
                )
                self.precision = engines.precision
        self.max_side = self._max_side()
        # What outputs name the model by (A1111's "Model" and "Model hash" read them).
        self.model_info = {
            "fastimg:model": _model_name(manifest),
            "fastimg:model_hash": manifest.graph_digest(("unet",))[:10],
        }
        log.info(describe(self.backend, self.precision))

    @classmethod
    def from_engines(
        cls,
        folder: str | Path,
        backend: str = "auto",
        precision: str = "auto",
        threads: int | None = None,
        max_concurrency: int = 1,
        device: int | None = None,
        shapes: str = "dynamic",
    ) -> "Img2ImgPipeline":
        """Load every engine of an exported folder on the backend asked for (auto: fastest)."""
        return cls(
            load_manifest(folder),
            backend=backend,
            precision=precision,
            threads=threads,
            max_concurrency=max_concurrency,
            device=device,
            shapes=shapes,
        )

    def _max_side(self) -> int:
        """The longest image side these engines take here: what the manifest states, bounded
        by what one image's activations can have of the memory free now (TensorRT plans bound
        their own sizes)."""
        stated = self.manifest.max_side
        fits = None
        if self.backend != "tensorrt":
            free = memory.free_bytes(self.device)
            fits = memory.largest_side(
                self.manifest,
                free,
                fused=self._fused(self.backend),
                scratch=_scratch(self.backend, self.precision),
                variant=graph_variant(self.backend, self.precision),
            )
        sides = [side for side in (stated, fits) if side is not None]
        return min(sides) if sides else DEFAULT_MAX_SIDE

    def plan(self, sampler: str, steps: int, strength: float) -> schedules.Plan:
        """The per-step coefficients of a call (its .steps: the UNet steps that run)."""
        return plan_for(self.manifest, sampler, steps, strength)

    def _fused(self, backend: str) -> frozenset:
        """The components `backend` runs with attention fused (never holding the scores):
        OpenVINO fuses every attention itself, ONNX Runtime runs the fused variant graphs."""
        components = self.manifest.components
        if backend == "openvino":
            return frozenset(components)
        if backend != "onnxruntime":
            return frozenset()
        return frozenset(
            c for c in components if self.manifest.variant(c, "onnxruntime").get("fused_attention")
        )

    @property
    def exact(self) -> bool:
        """Whether this pipeline runs the exact path (fp32, matching diffusers' images)."""
        return self.precision == "fp32"

    @property
    def device(self) -> str:
        """'cpu', or 'cuda:N' for the GPU backends."""
        engines = self._primary()
        if engines is None:  # TensorRT before its first call
            return f"cuda:{self._options['device'] or 0}"
        return "cpu" if engines.device == "cpu" else f"cuda:{engines.device_index}"

    @property
    def sessions(self) -> dict:
        """component -> session of the engines loaded most recently (empty before a TensorRT
        pipeline's first call)."""
        engines = self._primary()
        return {} if engines is None else engines.sessions

    @property
    def xp(self):
        """The array module of the main engines: numpy, or cupy on a GPU."""
        engines = self._primary()
        return namespace("cuda") if engines is None else engines.xp

    @xp.setter
    def xp(self, module) -> None:
        self._default_engines().xp = module

    def _primary(self) -> Engines | None:
        with self._lock:
            return next(reversed(self._loaded.values()), None)

    def _default_engines(self) -> Engines:
        engines = self._primary()
        if engines is None:
            raise EngineError(
                "no TensorRT plan set is loaded before the first call: call the pipeline, or "
                "pass engines=pipe.engines_for(height, width, batch) to the stage methods"
            )
        return engines

    def wrap_sessions(self, wrap: Callable[[str, object], object]) -> None:
        """Replace every session, now and as plan sets load, by wrap(component, session)."""
        self._wrap = wrap
        for engines in (*self._loaded.values(), self._fallback):
            if engines is not None:
                engines.sessions = {n: wrap(n, s) for n, s in engines.sessions.items()}

    def _load(self, backend: str, precision: str, plans=None) -> Engines:
        engines = load_engines(
            backend,
            self.manifest,
            self.manifest.component_names,
            precision,
            plans=plans,
            shapes=self.shapes,
            **self._options,
        )
        engines.xp = namespace(engines.device)
        if self._wrap is not None:
            engines.sessions = {n: self._wrap(n, s) for n, s in engines.sessions.items()}
        return engines

    def engines_for(self, height: int, width: int, batch: int) -> Engines:
        """The engines that run a call of `batch` images of height x width pixels."""
        if self.backend != "tensorrt":
            return self._loaded[None]
        from ..backends.select import tensorrt_plans_here

        try:
            plans = tensorrt_plans_here(
                self.manifest,
                self._options["device"],
                height=height,
                width=width,
                batch=batch,
                precision=self.precision,
            )
        except EngineError as exc:
            if not self._auto:
                raise
            return self._fallback_engines(f"{width}x{height}, {batch} per call: {exc}")
        with self._loading:
            with self._lock:
                engines = self._loaded.get(plans.key)
            if engines is None:
                engines = self._load("tensorrt", self.precision, plans)
            with self._lock:
                self._loaded[plans.key] = engines
                self._loaded.move_to_end(plans.key)
                while len(self._loaded) > MAX_PLAN_SETS:
                    self._loaded.popitem(last=False)
            return engines

    def _fallback_engines(self, reason: str) -> Engines:
        with self._loading:
            if self._fallback is None:
                # The precision asked for is kept: an exact (fp32) pipeline stays exact.
                backend, precision = resolve(
                    "auto",
                    self._asked_precision,
                    self.manifest,
                    self._options["device"],
                    exclude=("tensorrt",),
                )
                self._fallback = self._load(backend, precision)
        log.warning("TensorRT passed over for %s; running on %s", reason, self._fallback.label)
        return self._fallback

    def encode_prompt(
        self, prompt: str, negative_prompt: str | None, cfg: bool, engines: Engines | None = None
    ) -> np.ndarray:
        """Text embeddings, [negative, positive] stacked on the batch axis under CFG; cached."""
        return self.encode_text(prompt, negative_prompt, cfg, engines)["encoder_hidden_states"]

    def encode_text(
        self,
        prompt: str,
        negative_prompt: str | None,
        cfg: bool,
        engines: Engines | None = None,
        prompt_2: str | None = None,
        negative_prompt_2: str | None = None,
    ) -> dict:
        """The UNet's text inputs, [negative, positive] on the batch axis under CFG, cached:
        encoder_hidden_states, and for SDXL text_embeds (the second encoder's pooled output),
        encoded as StableDiffusionXLImg2ImgPipeline.encode_prompt does."""
        engines = engines or self._default_engines()
        sdxl = bool(self.manifest.text_conditioning)
        if not sdxl:
            negative_prompt = negative_prompt or ""
        key = (prompt, prompt_2, negative_prompt, negative_prompt_2, cfg, engines.label)
        if not cfg:
            key = (prompt, prompt_2, None, None, cfg, engines.label)
        with self._lock:
            cached = self._prompt_cache.get(key)
            if cached is not None:
                self._prompt_cache.move_to_end(key)
                return cached
        if sdxl:
            negatives = (negative_prompt, negative_prompt_2)
            out = self._encode_xl(prompt, prompt_2, negatives, cfg, engines)
        else:
            prompts = [negative_prompt, prompt] if cfg else [prompt]
            ids = self.tokenizer(prompts)
            hidden = engines.sessions["text_encoder"].run({"input_ids": ids})["last_hidden_state"]
            out = {"encoder_hidden_states": hidden.astype(np.float32, copy=True)}
        with self._lock:
            self._prompt_cache[key] = out
            while len(self._prompt_cache) > PROMPT_CACHE_SIZE:
                self._prompt_cache.popitem(last=False)
        return out

    def _encode_xl(self, prompt, prompt_2, negatives, cfg, engines) -> dict:
        """Each encoder's penultimate states concatenated, pooled from text_encoder_2; the
        i-th encoder present reads the i-th of (prompt, prompt_2), so the refiner reads only
        `prompt`, as in diffusers. Without a negative prompt and with
        force_zeros_for_empty_prompt, the negative embeddings are zeros."""
        xp, conditioning = engines.xp, self.manifest.text_conditioning
        negative_prompt, negative_prompt_2 = negatives
        zeros = negative_prompt is None and conditioning.get("force_zeros_for_empty_prompt")
        texts = [[prompt, prompt_2 or prompt]]
        if cfg and not zeros:
            negative_prompt = negative_prompt or ""
            texts.insert(0, [negative_prompt, negative_prompt_2 or negative_prompt])
        states, pooled = [], None
        for k, encoder in enumerate(self.manifest.text_encoders):
            ids = self.tokenizers[encoder]([row[k] for row in texts])
            out = engines.sessions[encoder].run({"input_ids": ids})
            states.append(out["hidden_states"])
            if encoder == conditioning.get("pooled"):
                pooled = out["text_embeds"]
        hidden = xp.concatenate(states, axis=-1).astype(np.float32, copy=True)
        pooled = pooled.astype(np.float32, copy=True)
        if cfg and zeros:
            hidden = xp.concatenate([xp.zeros_like(hidden), hidden])
            pooled = xp.concatenate([xp.zeros_like(pooled), pooled])
        return {"encoder_hidden_states": hidden, "text_embeds": pooled}

    def encode_image(
        self,
        pixels: np.ndarray,
        rng: TorchCompatibleGenerator,
        engines: Engines | None = None,
        chunk: int | None = None,
    ) -> np.ndarray:
        """Scaled latents of the images (`chunk` per encoder call at most): from a KL encoder's
        moments, a sample mean + std * eps (one draw of the generator); from a tiny encoder
        (TAESD), its latents as they are."""
        engines = engines or self._default_engines()
        xp, encoder = engines.xp, engines.sessions["vae_encoder"]
        chunk = chunk or len(pixels)
        outs = [
            encoder.run({"sample": pixels[j : j + chunk]}) for j in range(0, len(pixels), chunk)
        ]
        out = {
            name: outs[0][name] if len(outs) == 1 else xp.concatenate([o[name] for o in outs])
            for name in outs[0]
        }
        if "latents" in out:
            z = _check_finite(out["latents"], "VAE encoder output", engines)
        else:
            moments = _check_finite(out["latent_parameters"], "VAE encoder output", engines)
            mean, logvar = xp.split(moments, 2, axis=1)
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
        engines: Engines | None = None,
        chunk: int | None = None,
        conditioning: dict | None = None,
    ) -> np.ndarray:
        """Noise the latents to the plan's first timestep, then run the sampler over the UNet
        (`chunk` images per UNet call at most: the images are independent, so memory, not
        the result, depends on it; `conditioning`: extra UNet inputs, one row per image)."""
        engines = engines or self._default_engines()
        xp, unet = engines.xp, engines.sessions["unet"]
        n = latents.shape[0]
        chunk = chunk or n
        cfg = embeddings.shape[0] == 2 * n
        x = samplers.add_noise(latents, xp.asarray(rng.randn(latents.shape)), plan)
        if xp is not np:  # the loop's noise goes to the device in one copy, drawn in order
            rng = PredrawnNoise(rng, latents.shape, samplers.noise_draws(plan), xp)
        finite = []  # (step, flag), read once after the loop: no host sync inside it

        # One row per image, or (SDXL's text_embeds, time_ids) [negatives, positives] under CFG.
        extra = {name: xp.asarray(rows) for name, rows in (conditioning or {}).items()}
        paired = {name for name, rows in extra.items() if cfg and rows.shape[0] == 2 * n}

        def rows_for(name: str, j: int, count: int):
            """The conditioning rows of images j .. j + count - 1, both halves under CFG."""
            rows = extra[name]
            if name in paired:
                return xp.concatenate([rows[j : j + count], rows[n + j : n + j + count]])
            return xp.concatenate([rows[j : j + count]] * 2) if cfg else rows[j : j + count]

        def unet_on(x_in, j: int, i: int):
            """The guided noise prediction for images j .. j + len(x_in) - 1."""
            emb = embeddings[j : j + len(x_in)]
            feeds = {name: rows_for(name, j, len(x_in)) for name in extra}
            if cfg:
                emb = xp.concatenate([emb, embeddings[n + j : n + j + len(x_in)]])
                x_in = xp.concatenate([x_in, x_in])
            t = xp.full(x_in.shape[0], plan.timesteps[i], dtype=np.float32)
            feeds.update(sample=x_in, timestep=t, encoder_hidden_states=emb)
            out = unet.run(feeds)
            out = out["out_sample"]
            finite.append((i, _finite(out)))
            if cfg:
                uncond, text = xp.split(out, 2)
                out = uncond + np.float32(guidance_scale) * (text - uncond)
            return out

        def denoise(x, i: int):
            x_in = x * np.float32(plan.input_scale[i])
            outs = [unet_on(x_in[j : j + chunk], j, i) for j in range(0, n, chunk)]
            out = outs[0] if len(outs) == 1 else xp.concatenate(outs)
            if callback is not None:
                callback(i + 1, plan.steps)
            return samplers.predict(out, x, plan, i)

        x = samplers.SAMPLE[plan.sampler](denoise, x, plan, rng)
        for i, ok in finite:
            if not bool(ok):
                raise _nan_error(f"UNet output at step {i + 1}", engines)
        return x

    def decode(
        self, latents: np.ndarray, engines: Engines | None = None, chunk: int | None = None
    ) -> np.ndarray:
        """uint8 NHWC images from latents, decoded `chunk` images at a time."""
        engines = engines or self._default_engines()
        scaled = latents / np.float32(self.manifest.vae_scaling_factor)
        chunk, decoded = chunk or len(scaled), []
        for j in range(0, len(scaled), chunk):
            part = {"latent_sample": scaled[j : j + chunk]}
            pixels = engines.sessions["vae_decoder"].run(part)["sample"]
            decoded.append(
                to_host(images.to_uint8(_check_finite(pixels, "decoded image", engines)))
            )
        return decoded[0] if len(decoded) == 1 else np.concatenate(decoded)

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
        prompt_2: str | None = None,
        negative_prompt_2: str | None = None,
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] | None = None,
        target_size: tuple[int, int] | None = None,
        aesthetic_score: float | None = None,
        negative_aesthetic_score: float | None = None,
    ) -> list[Image.Image]:
        """Transform `image` toward `prompt`; the same seed gives diffusers' image for it.

        Each image's `info` holds the settings, the seed (drawn when none was given), and the
        backend and precision that made it (`fastimg:*` keys, saved as PNG text by the CLI).
        SDXL folders also take StableDiffusionXLImg2ImgPipeline's `prompt_2`,
        `negative_prompt_2`, `original_size`, `crops_coords_top_left`, `target_size` (base) and
        `aesthetic_score`, `negative_aesthetic_score` (refiner); None means diffusers' default.
        """
        request = self._prepare(
            prompt,
            image,
            strength,
            num_inference_steps,
            guidance_scale,
            negative_prompt,
            num_images_per_prompt,
            seed,
            scheduler,
            prompt_2=prompt_2,
            negative_prompt_2=negative_prompt_2,
            original_size=original_size,
            crops_coords_top_left=crops_coords_top_left,
            target_size=target_size,
            aesthetic_score=aesthetic_score,
            negative_aesthetic_score=negative_aesthetic_score,
        )
        return self._run([request], callback)[0]

    def call_many(
        self, calls: list[dict], callback: Callable[[int, int], None] | None = None
    ) -> list[list[Image.Image]]:
        """Several calls (each a dict of __call__'s arguments less `callback`), those with the
        same image size, sampler, steps, strength and guidance run as one batch per engine
        call; each call's images are the ones __call__ gives it alone (its own seed's noise,
        prompt and image). Every call is checked before any runs."""
        requests = [self._prepare(**call) for call in calls]
        groups: dict[tuple, list[int]] = {}
        for k, request in enumerate(requests):
            groups.setdefault(request.key, []).append(k)
        results: list[list[Image.Image]] = [[] for _ in requests]
        for members in groups.values():
            made = self._run([requests[k] for k in members], callback)
            for k, images_made in zip(members, made, strict=True):
                results[k] = images_made
        return results

    def _prepare(
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
        **sdxl,
    ) -> "Request":
        """One call's arguments checked, its seed drawn and its image read into pixels."""
        micro = self._check_sdxl_arguments(**{key: sdxl.pop(key, None) for key in SDXL_ARGUMENTS})
        if sdxl:
            raise InputError(f"unknown argument {next(iter(sdxl))!r}")
        checked = _validate(
            prompt,
            negative_prompt,
            strength,
            guidance_scale,
            num_inference_steps,
            num_images_per_prompt,
            seed,
        )
        strength, guidance_scale, num_inference_steps, num_images_per_prompt, seed = checked
        if isinstance(image, str | Path):
            image = images.load_image(image)
        if not isinstance(image, Image.Image):
            raise InputError(f"image must be a PIL image or a path, got {type(image).__name__}")
        sampler = resolve_sampler(self.manifest, scheduler)
        plan = self.plan(sampler, num_inference_steps, strength)
        seed = secrets.randbelow(2**32) if seed is None else seed
        if self.distilled and negative_prompt:
            log.warning(
                "an LCM-distilled model takes no negative prompt (as in diffusers): ignored"
            )
            negative_prompt = None
        return Request(
            prompt=prompt,
            negative_prompt=negative_prompt,
            micro=micro,
            seed=seed,
            rng=TorchCompatibleGenerator(seed),
            pixels=images.to_pixels(image, self.manifest.vae_scale_factor, self.max_side),
            count=num_images_per_prompt,
            sampler=sampler,
            plan=plan,
            strength=strength,
            steps=num_inference_steps,
            guidance_scale=guidance_scale,
            cfg=guidance_scale > 1.0 and not self.distilled,
        )

    def _run(self, group: list["Request"], callback) -> list[list[Image.Image]]:
        """Run requests that share a key as one batch; each request's images, in order."""
        first = group[0]
        height, width = first.pixels.shape[2], first.pixels.shape[3]
        cfg, guidance_scale = first.cfg, first.guidance_scale
        counts = [request.count for request in group]
        total = sum(counts)
        engines = self.engines_for(height, width, total)
        chunk, kept = total, 0
        fused, scratch = self._fused(engines.backend), _scratch(engines.backend, engines.precision)
        variant = graph_variant(engines.backend, engines.precision)
        if engines.backend != "tensorrt":  # (TensorRT's activation memory is allocated at load)
            free = memory.free_bytes(engines.device)
            if free is not None:  # what earlier calls left with the engines is theirs to reuse
                free += self._kept.get(engines.label, 0)
            chunk = memory.images_per_call(
                self.manifest, height, width, total, cfg, free, fused, scratch, variant
            )
            kept = memory.peak_bytes(
                self.manifest, height, width, chunk, cfg, fused, scratch, variant
            )
        aesthetics = bool(self.manifest.text_conditioning.get("requires_aesthetics_score"))
        # GPU backends run all of the call's array work on their device and stream, in order.
        with engines.activate():
            xp = engines.xp
            texts = [
                self.encode_text(
                    r.prompt,
                    r.negative_prompt,
                    cfg,
                    engines,
                    r.micro.get("prompt_2"),
                    r.micro.get("negative_prompt_2"),
                )  # fmt: skip
                for r in group
            ]
            embeddings = _stack(
                [
                    xp.repeat(t["encoder_hidden_states"], c, axis=0)
                    for t, c in zip(texts, counts, strict=True)
                ],
                counts,
                cfg,
                xp,
            )
            conditioning = {}
            for name, build in CONDITIONING.items():
                if name in self.conditioning:
                    rows = [
                        build(
                            self.conditioning[name],
                            Call(
                                c,
                                guidance_scale,
                                cfg,
                                height,
                                width,
                                t.get("text_embeds"),
                                r.micro,
                                aesthetics,
                            ),
                        )  # fmt: skip
                        for r, t, c in zip(group, texts, counts, strict=True)
                    ]
                    conditioning[name] = _stack(rows, counts, cfg, np)
            rngs = [r.rng for r in group]
            pixels = np.concatenate([r.pixels for r in group]) if len(group) > 1 else first.pixels
            # TensorRT's VAE encoder plans take one image per call (profiles.input_shapes).
            per_encode = 1 if engines.backend == "tensorrt" else chunk
            z = self.encode_image(pixels, _generators(rngs, [1] * len(group)), engines, per_encode)
            z = xp.repeat(z, counts, axis=0) if len(group) > 1 else xp.repeat(z, total, axis=0)
            latents = self.denoise(
                z,
                embeddings,
                first.plan,
                guidance_scale,
                _generators(rngs, counts),
                callback,
                engines,
                chunk,
                conditioning,
            )
            decoded = self.decode(latents, engines, chunk)
        with self._lock:
            self._kept[engines.label] = max(self._kept.get(engines.label, 0), kept)
        results, start = [], 0
        for request in group:
            settings = self._settings(request, engines)
            made = []
            for k, array in enumerate(decoded[start : start + request.count]):
                result = Image.fromarray(array)
                result.info.update(settings, **{"fastimg:index": k})
                made.append(result)
            results.append(made)
            start += request.count
        return results

    def _settings(self, request: "Request", engines: Engines) -> dict:
        """What each image of `request` is labelled with."""
        settings = {
            "fastimg:prompt": request.prompt,
            "fastimg:negative_prompt": request.negative_prompt or "",
            "fastimg:seed": request.seed,
            "fastimg:strength": request.strength,
            "fastimg:steps": request.steps,
            "fastimg:guidance": request.guidance_scale,
            "fastimg:scheduler": request.sampler,
            "fastimg:backend": engines.backend,
            "fastimg:precision": engines.precision,
            **self.model_info,
        }
        if engines.plan_set:
            settings["fastimg:plan_set"] = engines.plan_set
        return settings

    def _check_sdxl_arguments(self, **given) -> dict:
        """The SDXL-only arguments given, checked against this folder's model family."""
        return check_sdxl_arguments(self.manifest, given)


def check_sdxl_arguments(manifest: Manifest, given: dict) -> dict:
    """The SDXL-only arguments that are not None, checked and normalized; refused (naming the
    mismatch) where the folder is not SDXL, or is the base given the refiner's or the refiner
    given the base's."""
    given = {name: value for name, value in given.items() if value is not None}
    unknown = [name for name in given if name not in SDXL_ARGUMENTS]
    if unknown:
        raise InputError(f"unknown SDXL argument {', '.join(unknown)}")
    family = manifest.data.get("model_family") or "sd"
    conditioning = manifest.text_conditioning
    if not conditioning:
        if given:
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
    for name in ("prompt_2", "negative_prompt_2"):
        if name in given:
            if not isinstance(given[name], str):
                raise InputError(f"{name} must be a string")
            check_prompt(given[name])
    for name in ("original_size", "crops_coords_top_left", "target_size"):
        if name in given:
            given[name] = _pair(given[name], name, least=0 if name.startswith("crops") else 1)
    for name in REFINER_ONLY:
        if name in given:
            given[name] = _real(given[name], name)
    return given


def _pair(value, name: str, least: int) -> tuple[int, int]:
    """(height, width) or (top, left) as two whole numbers >= least."""
    if isinstance(value, str) or not hasattr(value, "__len__") or len(value) != 2:
        raise InputError(f"{name} must be two whole numbers (height, width), got {value!r}")
    pair = tuple(_whole(v, name) for v in value)
    if min(pair) < least or max(pair) > 2**20:
        raise InputError(f"{name} must be two whole numbers in [{least}, 2**20], got {value!r}")
    return pair


def plan_for(manifest: Manifest, sampler: str, steps: int, strength: float) -> schedules.Plan:
    """The per-step coefficients of a call on `manifest`'s engines, with none of them loaded."""
    return schedules.make_plan(
        manifest.scheduler,
        sampler,
        steps,
        strength,
        # an LCM-distilled UNet (timestep_cond input) cuts its schedule by the strength, as
        # LatentConsistencyModelImg2ImgPipeline
        strength_in_schedule="timestep_cond" in manifest.components["unet"]["inputs"],
    )


class Planner:
    """What `batch.check_jobs` needs of a pipeline (.manifest, .plan), from the manifest alone:
    a batch is checked on a machine that loads no engines."""

    def __init__(self, manifest: Manifest):
        self.manifest = manifest

    def plan(self, sampler: str, steps: int, strength: float) -> schedules.Plan:
        """The per-step coefficients of a call (its .steps: the UNet steps that run)."""
        return plan_for(self.manifest, sampler, steps, strength)


def _model_name(manifest: Manifest) -> str:
    """The name of what was exported (hub repo, folder or checkpoint file, as A1111 names it)."""
    name = Path(str(manifest.data.get("source") or manifest.folder.resolve().name))
    return name.stem if name.suffix in (".safetensors", ".ckpt") else name.name


def check_prompt(text: str) -> None:
    """Refuse a prompt that is too long or not valid Unicode, quoting only its start."""
    if len(text) > MAX_PROMPT_CHARS:
        raise InputError(
            f"a prompt of {len(text)} characters is more than the {MAX_PROMPT_CHARS} fastimg "
            f"takes (the text encoder reads only its first 77 tokens): shorten {quote(text)}"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(
            f"prompt {quote(text)} is not valid Unicode text (undecodable bytes?): pass it as UTF-8"
        ) from None


def _validate(prompt, negative_prompt, strength, guidance, steps, num_images, seed) -> tuple:
    """Check the call's values once, at entry; numbers of any real type become Python's own."""
    if not isinstance(prompt, str):
        raise InputError(f"prompt must be a string, got {type(prompt).__name__}")
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        raise InputError("negative_prompt must be a string")
    for text in (prompt, negative_prompt or ""):
        check_prompt(text)
    strength = _real(strength, "strength")
    guidance = _real(guidance, "guidance")
    if guidance < 0:
        raise InputError(f"guidance must be at least 0, got {guidance}")
    steps = _whole(steps, "num_inference_steps")
    num_images = _whole(num_images, "number of images")
    if not 1 <= num_images <= MAX_IMAGES:
        raise InputError(f"number of images must be between 1 and {MAX_IMAGES}, got {num_images}")
    if seed is not None:
        seed = _whole(seed, "seed")
        if not 0 <= seed < 2**32:
            raise InputError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    return strength, guidance, steps, num_images, seed


def _real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value!r}")
    return value


def _whole(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"{name} must be a whole number, got {value!r}")
    return int(value)
