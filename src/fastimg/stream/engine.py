"""The stream engine: video frames in, transformed frames out, over one img2img pipeline.

Every frame runs as the single-image call with the same settings and seed would (the same
noise each frame, so a still input gives a still output), unless StreamDiffusion's options
change that:
- `stream_batch`: frames at different steps share one UNet batch (the denoising batch); a
  frame's output comes `steps run - 1` pushes later, and is the one it would be alone.
- `rcfg` "self" / "onetime": residual CFG (lcm sampler), guidance without a negative image per
  step ("onetime": one negative image per frame).
- `similarity`: the stochastic similarity filter; a skipped frame reuses the last output.
- `feedback`: that fraction of the last output's latents is blended into the frame's clean
  latents before the noise is added.
- `control`: a ControlNet folder's control settings (control_image, control_preprocess, ...,
  as the single call takes them): each frame is steered as that call would be (a ControlNet
  without a control image takes the frame, made by its preprocessor); on the stage path each
  frame in flight is one row with its own control image and step (stream.guides).
- `mask`: one mask for every frame (mask_image, mask_invert, mask_blur, keep_unmasked, as the
  single call takes them): each frame is inpainted as that call would be, on a plain UNet
  (the kept region put back after every step) and on an inpainting UNet (mask and masked
  image latents beside each row); not "only masked" (padding_mask_crop).
Prompts are encoded once (and again only when update() changes them); nothing recompiles. A
prompt, seed or guidance change applies from the next UNet call, to the frames in flight too
(as StreamDiffusion's); a strength change first finishes the frames in flight on their steps.
"""

from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from ..diffusion import conditioning, samplers
from ..diffusion.checks import CheckedCall, check_call
from ..diffusion.control import ControlRun, model_label, prepare_control
from ..diffusion.masks import (
    MaskRun,
    check_not_empty,
    encodes_image,
    mask_geometry,
    mask_labels,
    prepare_mask,
)
from ..diffusion.request import Request, check_finite
from ..diffusion.rng import TorchCompatibleGenerator
from ..errors import InputError
from ..media import images
from ..settings import CallSettings
from . import guides, rcfg, stages
from .similarity import SimilarityFilter

UPDATABLE = ("prompt", "negative_prompt", "seed", "strength", "guidance")


@dataclass(frozen=True)
class StreamSettings:
    """What a stream runs with: the single-image call's settings and StreamDiffusion's options."""

    prompt: str
    negative_prompt: str = ""
    strength: float = 0.5
    steps: int = 2  # num_inference_steps as in the single-image call
    guidance: float = 0.0  # guidance_scale
    sampler: str | None = None  # None: the engine folder's default
    seed: int = 0
    width: int | None = None  # None: the first frame's size rounded as the pipeline does
    height: int | None = None
    stream_batch: bool = False  # StreamDiffusion's denoising batch
    rcfg: str = "none"  # "none" | "self" | "onetime" (residual CFG); "full" = plain CFG
    similarity: float | None = None  # stochastic similarity filter threshold (None: off)
    max_skip: int = 10  # at most this many frames skipped in a row
    feedback: float = 0.0  # fraction of the previous output's latents blended in
    # A ControlNet's settings by CallSettings' names (control_image, control_preprocess,
    # controlnet_conditioning_scale, control_guidance_start, control_guidance_end); None: none
    control: dict | None = None
    # One mask for every frame, by CallSettings' names (mask_image, mask_invert, mask_blur,
    # keep_unmasked); None: none
    mask: dict | None = None

    @classmethod
    def from_call(cls, call, sampler: str | None, **options) -> "StreamSettings":
        """A stream's settings from a single call's (CallSettings; `sampler`: the one it
        resolved to, its ControlNet and mask settings unless `options` give `control` or
        `mask`) and StreamDiffusion's `options`."""
        options.setdefault("control", call_control(call))
        options.setdefault("mask", call_mask(call))
        return cls(
            prompt=call.prompt,
            negative_prompt=call.negative_prompt or "",
            strength=call.strength,
            steps=call.num_inference_steps,
            guidance=call.guidance_scale,
            sampler=sampler,
            seed=call.seed,
            **options,
        )


def call_control(call) -> dict | None:
    """A call's ControlNet settings as StreamSettings.control takes them (None: no control)."""
    names = ("control_image", "control_preprocess", "controlnet_conditioning_scale",
             "control_guidance_start", "control_guidance_end")  # fmt: skip
    if call.control_image is None and call.control_preprocess is None:
        return None
    return {name: getattr(call, name) for name in names if getattr(call, name) is not None}


def call_mask(call) -> dict | None:
    """A call's mask settings as StreamSettings.mask takes them (None: no mask)."""
    if call.mask_image is None:
        return None
    names = ("mask_image", "mask_invert", "mask_blur", "padding_mask_crop", "keep_unmasked")
    return {name: getattr(call, name) for name in names if getattr(call, name) is not None}


@dataclass(frozen=True)
class StreamFrame:
    """One output frame, with the tag of the input frame it came from."""

    image: Image.Image  # the output (its .info carries fastimg's settings keys)
    tag: object
    skipped: bool  # True when the similarity filter reused the last output


@dataclass
class _Flight:
    """A frame between its first and last step (the stage path)."""

    tag: object
    x: object  # the sampler state, one row
    stage: int = 0
    residual: object = None  # its RCFG residual noise
    control: object = None  # its ControlNets' control (diffusion.control.Control), or None
    mask: object = None  # its mask (diffusion.masks.Mask), or None
    mask_run: object = None  # its MaskRun on the stage path, or None
    followers: list = field(default_factory=list)  # tags of skipped frames reusing its output


@dataclass(frozen=True)
class _Derived:
    """What the settings give: the checked call, and how its frames run."""

    checked: CheckedCall
    cfg: bool  # plain CFG (a negative image per step)
    staged: bool  # steps run through the stage path (stream batch or residual CFG)

    @property
    def plan(self):
        """The call's per-step plan."""
        return self.checked.plan


def _check_options(s: StreamSettings) -> None:
    """The stream's own options checked (the call's settings are check_call's)."""
    if isinstance(s.seed, bool) or not isinstance(s.seed, int):
        raise InputError(f"a stream's seed must be a whole number (one for every frame), got "
                         f"{s.seed!r}")  # fmt: skip
    if not isinstance(s.stream_batch, bool):
        raise InputError(f"stream_batch must be true or false, got {s.stream_batch!r}")
    if s.similarity is not None and not (
        isinstance(s.similarity, int | float) and 0 < s.similarity <= 1
    ):
        raise InputError(f"similarity must be in (0, 1] (or off), got {s.similarity!r}")
    if not (isinstance(s.max_skip, int) and s.max_skip >= 0):
        raise InputError(f"max_skip must be a whole number >= 0, got {s.max_skip!r}")
    if not (isinstance(s.feedback, int | float) and 0 <= s.feedback < 1):
        raise InputError(f"feedback must be in [0, 1), got {s.feedback!r}")
    for name in ("width", "height"):
        value = getattr(s, name)
        if value is not None and not (isinstance(value, int) and value > 0):
            raise InputError(f"{name} must be a whole number of pixels, got {value!r}")


class StreamEngine:
    """Frames through an Img2ImgPipeline, one thread: push() each, flush() at the end."""

    def __init__(self, pipeline, settings: StreamSettings):
        self.pipeline = pipeline
        self._derived = self._derive(settings)
        self._settings = settings
        self._size: tuple[int, int] | None = None
        self._engines = None
        self._text = None  # (embeddings, extra rows) of the current prompt, by size
        self._noise = None  # (key, starting noise, loop noise) of the current seed and plan
        self._flights: list[_Flight] = []  # newest first
        self._ready: deque[StreamFrame] = deque()
        self._last: Image.Image | None = None
        self._last_latents = None
        self._mask_geometry = None  # the mask's blur and binarizing at the frames' size, kept
        self._filter = None
        if settings.similarity is not None:
            self._filter = SimilarityFilter(settings.similarity, settings.max_skip, settings.seed)

    @property
    def settings(self) -> StreamSettings:
        """The settings the next frame runs with."""
        return self._settings

    def _derive(self, s: StreamSettings) -> _Derived:
        """Check `s` against the pipeline's engines; what its frames run with."""
        _check_options(s)
        pipe = self.pipeline
        call = CallSettings(
            prompt=s.prompt,
            negative_prompt=s.negative_prompt or None,
            strength=s.strength,
            num_inference_steps=s.steps,
            guidance_scale=s.guidance,
            seed=s.seed,
            scheduler=s.sampler,
            **(s.control or {}),
            **(s.mask or {}),
        )
        checked = check_call(pipe.manifest, call)
        if checked.settings.padding_mask_crop is not None:
            raise InputError(
                "a stream transforms whole frames: padding_mask_crop (--inpaint-area masked) "
                "is for single images; leave it out (the mask still says what is repainted)"
            )
        mask = checked.settings.mask_image
        if isinstance(mask, str | Path):  # read once, not every frame
            mask = images.load_image(mask)
            checked = replace(checked, settings=checked.settings.with_values(mask_image=mask))
        elif mask is not None:  # (an empty mask refused now, not at every frame)
            check_not_empty(mask, checked.settings.mask_invert, checked.settings.mask_blur)
        if pipe.distilled and checked.settings.negative_prompt:
            checked = replace(checked, settings=checked.settings.with_values(negative_prompt=None))
        rcfg.check(s.rcfg, checked.plan, pipe.distilled)
        if s.stream_batch:
            stages.check_staged(checked.plan.sampler, "--stream-batch")
        residual = s.rcfg in ("self", "onetime")
        cfg = s.guidance > 1.0 and not pipe.distilled and not residual
        return _Derived(checked, cfg, s.stream_batch or residual)

    # --- the contract ---------------------------------------------------------------------

    def push(self, image: Image.Image, tag: object) -> StreamFrame | None:
        """Feed one input frame; returns the output that is ready now (with the stream batch the
        output of an earlier frame, None while the batch fills)."""
        pixels = self._pixels(image)
        reusable = self._last is not None or self._flights  # (none after a failed first frame)
        if self._filter is not None and self._filter.skip(pixels) and reusable:
            self._skip(tag)
        else:
            with self._loras():
                self._run(pixels, tag, image)
        return self._ready.popleft() if self._ready else None

    def flush(self) -> list[StreamFrame]:
        """Finish the frames still in flight (end of the source), in input order."""
        with self._loras():
            self._drain()
        done = list(self._ready)
        self._ready.clear()
        return done

    def update(self, **changes) -> None:
        """Change prompt / negative_prompt / seed / strength / guidance between frames, no
        warm-up."""
        unknown = [name for name in changes if name not in UPDATABLE]
        if unknown:
            raise InputError(
                f"update() cannot change {', '.join(unknown)}: only {', '.join(UPDATABLE)} "
                "change while a stream runs; start a new stream for the others"
            )
        settings = replace(self._settings, **changes)
        derived = self._derive(settings)  # (nothing changes when it is refused)
        if self._plan_key(derived) != self._plan_key(self._derived):
            with self._loras():
                self._drain()  # frames in flight finish on the steps they started with
        self._settings, self._derived, self._text = settings, derived, None

    # --- frames -----------------------------------------------------------------------------

    def _loras(self):
        """The pipeline's loaded LoRAs at their scales now, as a single call runs them."""
        adapters = self.pipeline.loras.adapters
        return adapters.using(adapters.for_call(None))

    @staticmethod
    def _plan_key(derived: _Derived) -> tuple:
        c = derived.checked
        return (c.sampler, c.settings.num_inference_steps, c.settings.strength)

    def _pixels(self, image: Image.Image) -> np.ndarray:
        """The frame as the pipeline's pixels, at the stream's size."""
        if not isinstance(image, Image.Image):
            raise InputError(f"a frame must be a PIL image, got {type(image).__name__}")
        pipe, s = self.pipeline, self._settings
        factor = pipe.manifest.vae_scale_factor
        if self._size is None:
            wanted = (s.width or image.width, s.height or image.height)
            self._size = images.check_sides(wanted, factor, pipe.max_side)
        if image.size != self._size:
            image = images.to_rgb(image).resize(self._size, resample=Image.LANCZOS)
        return images.to_pixels(image, factor, pipe.max_side)

    def _mask_for(self, settings, pixels: np.ndarray, image: Image.Image):
        """The frame's mask (None without one); what does not depend on the frame's pixels
        (blur, binarizing, inverting: the mask is the stream's) is computed once."""
        if settings.mask_image is None:
            return None
        size = tuple(pixels.shape[2:])
        if self._mask_geometry is None or self._mask_geometry.size != size:
            self._mask_geometry = mask_geometry(settings, *size)
        factor = self.pipeline.manifest.vae_scale_factor
        return prepare_mask(settings, pixels, factor, image, self._mask_geometry)

    def _skip(self, tag) -> None:
        """A skipped frame: the newest frame in flight's output, or the last one, reused."""
        if self._flights:
            self._flights[0].followers.append(tag)
        else:
            self._ready.append(StreamFrame(self._last, tag, True))

    def _run(self, pixels: np.ndarray, tag, image: Image.Image) -> None:
        """Encode the frame, then denoise it alone or as the newest row of the batch."""
        pipe, s, derived = self.pipeline, self._settings, self._derived
        engines = self._engines_for(pixels)
        with engines.activate():
            xp = engines.xp
            rng = TorchCompatibleGenerator(s.seed)  # the single call's generator, drawn alike
            settings, manifest = derived.checked.settings, pipe.manifest
            mask = self._mask_for(settings, pixels, image)
            if mask is None or encodes_image(manifest, settings.strength):
                # (masked_content fill: the pixels the engines see have the region filled)
                z = pipe.encode_image(pixels if mask is None else mask.image_pixels, rng, engines)
            else:  # an inpainting UNet at strength 1 starts from noise alone
                factor = manifest.vae_scale_factor
                z = xp.zeros((1, manifest.latent_channels, pixels.shape[2] // factor,
                              pixels.shape[3] // factor), np.float32)  # fmt: skip
            if s.feedback and self._last_latents is not None:
                f = np.float32(s.feedback)
                z = (np.float32(1) - f) * z + f * self._last_latents
            embeddings, extra = self._text_for(engines, pixels)
            control = self._control_for(image, pixels, engines)
            if not derived.staged:
                run = control and ControlRun(engines, manifest, [control], [1], derived.plan.steps)
                masking = mask and self._mask_run(mask, engines, rng)
                x = pipe.denoise(z, embeddings, derived.plan, s.guidance, rng, engines=engines,
                                 conditioning=extra, control_run=run,
                                 mask_run=masking)  # fmt: skip
                self._emit([_Flight(tag, x, control=control, mask=mask)], engines)
                return
            eps, drawn, _ = self._noise_for(rng, z.shape, xp, mask is not None)
            flight = _Flight(tag, None, control=control, mask=mask)
            if mask is None:
                flight.x = samplers.add_noise(z, eps, derived.plan)
            else:  # (the masked image's draw is the single call's, drawn once for the seed)
                flight.mask_run = self._mask_run(mask, engines, stages.Given(drawn))
                flight.x = flight.mask_run.start(z, eps, derived.plan)
            flight.residual = eps if s.rcfg == "self" else None
            if s.stream_batch:
                self._flights.insert(0, flight)
                self._emit(self._advance(self._flights, engines, pixels), engines)
                return
            done: list[_Flight] = []
            while not done:
                done = self._advance([flight], engines, pixels)
            self._emit(done, engines)

    def _control_for(self, image: Image.Image, pixels: np.ndarray, engines):
        """The frame's control as the single call makes it (None without one)."""
        if not self._settings.control:
            return None
        settings = self._derived.checked.settings
        # (the engine set, not the frame's engines: depth runs on the engines for its size)
        return prepare_control(settings, pixels.shape[2], pixels.shape[3], image,
                               self.pipeline.engines)  # fmt: skip

    def _mask_run(self, mask, engines, rng) -> MaskRun:
        """A frame's MaskRun, its masked image encoded with `rng`'s draw as the single call's."""
        pipe, strength = self.pipeline, self._derived.checked.settings.strength
        encode = lambda p: pipe.encode_image(p, rng, engines)  # noqa: E731
        return MaskRun(pipe.manifest, [mask], [1], strength, engines.xp, encode, rng)

    @staticmethod
    def _unet_row(flight: _Flight, plan):
        """A flight's UNet sample row: its scaled state (an inpainting UNet's: with its mask
        and masked image latents beside it)."""
        row = flight.x * np.float32(plan.input_scale[flight.stage])
        return row if flight.mask_run is None else flight.mask_run.unet_input(row, 0)

    def _drain(self) -> None:
        """Run the frames in flight to their last step (no new frame enters)."""
        while self._flights:
            engines = self._engines
            with engines.activate():
                self._emit(self._advance(self._flights, engines, None), engines)

    def _engines_for(self, pixels: np.ndarray):
        if self._engines is None:
            rows = self._derived.plan.steps if self._settings.stream_batch else 1
            self._engines = self.pipeline.engines_for(pixels.shape[2], pixels.shape[3], rows)
        return self._engines

    def _text_for(self, engines, pixels):
        """The prompt's embeddings and extra UNet rows, encoded once per prompt and size."""
        if self._text is None:
            pipe, s, derived = self.pipeline, self._settings, self._derived
            checked = derived.checked
            negatives = derived.cfg or s.rcfg == "onetime"
            micro = checked.micro
            text = pipe.encode_text(
                checked.settings.prompt, checked.settings.negative_prompt, negatives, engines,
                micro.get("prompt_2"), micro.get("negative_prompt_2"),
            )  # fmt: skip
            call = conditioning.ConditioningCall(
                1, s.guidance, negatives, pixels.shape[2], pixels.shape[3],
                text.get("text_embeds"), micro,
                bool(pipe.manifest.text_conditioning.get("requires_aesthetics_score")),
            )  # fmt: skip
            extra = conditioning.build(pipe.conditioning, [call], [1], negatives)
            self._text = (text["encoder_hidden_states"], extra)
        return self._text

    def _noise_for(self, rng, shape, xp, masked: bool = False):
        """The starting noise, a masked call's draw for its masked image (KL VAEs; else
        None) and the loop's noise, drawn as the single call draws them (the same for every
        frame of one seed: drawn once)."""
        plan = self._derived.plan
        key = (self._settings.seed, tuple(shape), self._plan_key(self._derived), masked)
        if self._noise is None or self._noise[0] != key:
            eps = xp.asarray(rng.randn(shape))
            kl = self.pipeline.manifest.vae_kind == "kl"
            drawn = xp.asarray(rng.randn(shape)) if masked and kl else None
            loop = [xp.asarray(rng.randn(shape)) for _ in range(stages.stage_noise_count(plan))]
            self._noise = (key, eps, drawn, loop)
        return self._noise[1:]

    def _advance(self, flights: list[_Flight], engines, pixels) -> list[_Flight]:
        """One UNet call moving every flight one step; the flights that finished, oldest first."""
        s, derived = self._settings, self._derived
        plan, xp = derived.plan, engines.xp
        embeddings, extra = self._text_for(engines, pixels)
        positive, negative = embeddings[-1:], embeddings[:1]
        x_in = xp.concatenate([self._unet_row(f, plan) for f in flights])
        t = np.array([plan.timesteps[f.stage] for f in flights], dtype=np.float32)
        rows = len(flights)
        if derived.cfg:  # plain CFG: every row again with the negative prompt
            negatives = list(range(rows))
        elif s.rcfg == "onetime":  # a frame's first step only
            negatives = [k for k, f in enumerate(flights) if f.stage == 0]
        else:
            negatives = []
        feeds = {
            "sample": xp.concatenate([x_in[negatives], x_in]),
            "timestep": xp.asarray(np.concatenate([t[negatives], t])),
            "encoder_hidden_states": xp.concatenate(
                [xp.repeat(negative, len(negatives), axis=0), xp.repeat(positive, rows, axis=0)]
            ),
        }
        for name, built in extra.items():
            built = xp.asarray(built)
            feeds[name] = xp.concatenate(
                [xp.repeat(built[:1], len(negatives), axis=0), xp.repeat(built[-1:], rows, axis=0)]
            )
        unet = engines.sessions["unet"]
        if any(f.control is not None for f in flights):  # each row its frame's, at its step
            batch = [flights[k] for k in negatives] + flights
            unet = guides.control_session(
                engines, self.pipeline.manifest, [f.control for f in batch],
                [f.stage for f in batch], plan.steps, feeds, unet,
            )  # fmt: skip
        out = unet.run(feeds)["out_sample"]
        out = check_finite(out, "UNet output", engines)
        uncond, text = out[: len(negatives)], out[len(negatives) :]
        loop = self._noise[3] if self._noise is not None else []
        for k, f in enumerate(flights):
            pred = text[k : k + 1]
            if derived.cfg:
                u = uncond[k : k + 1]
                pred = u + np.float32(s.guidance) * (pred - u)
            elif f.residual is not None or k in negatives:
                if k in negatives:  # "onetime": the residual starts as the negative image
                    f.residual = uncond[negatives.index(k) : negatives.index(k) + 1]
                text_k = pred
                pred = rcfg.guide(text_k, f.residual, s.guidance) if s.guidance > 1 else text_k
            x0, eps = samplers.predict(pred, f.x, plan, f.stage)
            noise = stages.stage_noise(plan, loop, f.stage)
            if f.residual is not None and f.stage < plan.steps - 1:
                f.residual = rcfg.next_residual(plan, f.stage, pred, f.residual, noise)
            f.x = stages.step(plan, f.stage, f.x, x0, eps, noise)
            if f.mask_run is not None:  # a plain UNet's kept region back, at the next step
                f.x = f.mask_run.after_step(f.x, f.stage)
            f.stage += 1
        done = [f for f in flights if f.stage == plan.steps]
        for f in done:
            if f in self._flights:
                self._flights.remove(f)
        return done[::-1]

    def _emit(self, done: list[_Flight], engines) -> None:
        """Decode finished frames into the ready queue, each followed by its skipped frames."""
        if not done:
            return
        pipe = self.pipeline
        decoded = pipe.decode(engines.xp.concatenate([f.x for f in done]), engines)
        labels = self._labels(engines)
        for f, pixels in zip(done, decoded, strict=True):
            image = Image.fromarray(pixels)
            image = f.mask.finish(image) if f.mask is not None else image
            image.info.update(labels)
            if f.control is not None:  # (as the single call labels its control)
                count = len(f.control.pixels)
                image.info.update(f.control.labels(), **model_label(pipe.manifest, count))
            self._ready.append(StreamFrame(image, f.tag, False))
            self._ready.extend(StreamFrame(image, tag, True) for tag in f.followers)
            self._last, self._last_latents = image, f.x

    def _labels(self, engines) -> dict:
        """What each output is labelled with: the single call's keys, and the stream's options."""
        s, checked, derived = self._settings, self._derived.checked, self._derived
        call = checked.settings
        request = Request(
            prompt=call.prompt, negative_prompt=call.negative_prompt, micro=checked.micro,
            seed=s.seed, rng=None, pixels=None, count=1, sampler=checked.sampler,
            plan=checked.plan, strength=call.strength, steps=call.num_inference_steps,
            guidance_scale=call.guidance_scale, cfg=derived.cfg,
            loras=self.pipeline.loras.adapters.for_call(None),
        )  # fmt: skip
        labels = request.labels(engines, self.pipeline.model_info)
        labels.update(mask_labels(call))
        labels["fastimg:index"] = 0
        defaults = StreamSettings(prompt="")
        for name in ("stream_batch", "rcfg", "similarity", "feedback"):
            if getattr(s, name) != getattr(defaults, name):
                labels[f"fastimg:{name}"] = getattr(s, name)
        return labels
