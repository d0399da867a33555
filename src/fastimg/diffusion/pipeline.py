"""img2img over an engine folder, called like diffusers' pipeline: prompt -> text engines,
image -> VAE encoder -> noise -> sampler loop over the UNet -> VAE decoder -> images. Each
stage is its own method so it can be timed; a call reads as a numbered recipe (`_run`).

One pipeline may be called from many threads at once: each call has its own generator and
arrays, the prompt cache is locked, and each backend keeps what it cannot run twice at once
behind a pool or a lock of its own. The engines (and, for plan-set backends, which set runs
a call) are the EngineSet's; the checks of a call's settings are fastimg.diffusion.checks'.
"""

import logging
import secrets
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import numpy as np
from PIL import Image

from ..backends import SHAPES, Engines
from ..backends.registry import describe
from ..backends.scratch import giving_back_scratch
from ..backends.select import exported_in_fp16, resolve
from ..engine_folder.manifest import Manifest, load_manifest
from ..errors import InputError
from ..lora.files import parse_lora_spec
from ..media import images
from ..settings import SDXL_ARGUMENTS, SEED_LIMIT, CallSettings
from . import conditioning, samplers, schedules, vae_tiles
from .arrays import PredrawnNoise, namespace, to_host
from .checks import check_call, plan_for
from .control import ControlRun, model_label, prepare_control
from .engine_set import EngineSet, describe_run
from .loras import PipelineLoras
from .masks import MaskRun, encodes_image, prepare_mask
from .prompts import PromptEncoder
from .request import Request, check_finite, finite, generators, nan_error, stop_point
from .rng import TorchCompatibleGenerator

log = logging.getLogger("fastimg")

# What __call__ takes besides the image, the callback and the SDXL arguments.
CALL_ARGUMENTS = tuple(f.name for f in fields(CallSettings) if f.name != "sdxl")


class Img2ImgPipeline:
    """Stable Diffusion img2img on exported engines, called like diffusers' pipeline.

    `backend`/`precision` "auto" pick the fastest here (fp32 is the exact path, matching
    diffusers; bf16 and fp16 are fast and close); `max_concurrency` is how many engine runs
    may overlap per component when threads share the pipeline; `device` is the CUDA device
    index for the GPU backends (default: the current one); `shapes` is whether OpenVINO also
    compiles each call's exact shapes ("static"; "auto": from a shape's second call on; None: the
    backend's choice for one image size), and ONNX Runtime CUDA replays them from CUDA graphs."""

    def __init__(
        self,
        manifest: Manifest,
        backend: str = "auto",
        precision: str = "auto",
        threads: int | None = None,
        max_concurrency: int = 1,
        device: int | None = None,
        shapes: str | None = "dynamic",
    ):
        if not (isinstance(max_concurrency, int) and max_concurrency >= 1):
            raise InputError(
                f"max_concurrency must be a whole number >= 1, got {max_concurrency!r}"
            )
        if device is not None and not (isinstance(device, int) and device >= 0):
            raise InputError(f"device must be a CUDA device index (0, 1, ...), got {device!r}")
        if shapes is not None and shapes not in SHAPES:
            raise InputError(f"shapes must be one of {', '.join(SHAPES)}, got {shapes!r}")
        self.manifest, self.shapes = manifest, shapes
        self.backend, resolved = resolve(backend, precision, manifest, device=device)
        if describe(self.backend).gpu and device is None:
            from ..gpu import current_device

            device = current_device()  # one device for plans, caches and buffers alike
        self._device_index = device
        self.prompts = PromptEncoder(manifest)
        self.conditioning = conditioning.extra_inputs(manifest)
        # An LCM-distilled UNet is guided by its timestep_cond, not by a CFG batch.
        self.distilled = "timestep_cond" in self.conditioning
        options = {"threads": threads, "max_concurrency": max_concurrency, "device": device}
        self.engines = EngineSet(
            manifest, self.backend, resolved, options, shapes, backend == "auto", precision
        )
        self.max_side = self.engines.max_side(self.device)
        self.loras = PipelineLoras(self.engines)
        self.prompts.state = self.loras.adapters.state
        # What outputs name the model by (A1111's "Model" and "Model hash" read them).
        self.model_info = {
            "fastimg:model": manifest.model_name,
            "fastimg:model_hash": manifest.graph_digest(("unet",))[:10],
        }
        log.info(describe_run(self.backend, self.precision, exported_in_fp16(manifest)))

    @classmethod
    def from_engines(
        cls,
        folder: str | Path,
        backend: str = "auto",
        precision: str = "auto",
        threads: int | None = None,
        max_concurrency: int = 1,
        device: int | None = None,
        shapes: str | None = "dynamic",
        loras: tuple[str, ...] = (),
        lora_ready: bool = False,
    ) -> "Img2ImgPipeline":
        """Load every engine of an exported folder on the backend asked for (auto: fastest),
        and the LoRAs `loras` ('FILE[:SCALE]' each) at run time; `lora_ready` compiles the
        LoRA graphs now (pipe.loras.prepare()), so that each later load_lora takes milliseconds."""
        specs = [parse_lora_spec(spec) for spec in loras]  # a bad one fails before loading
        pipe = cls(
            load_manifest(folder),
            backend=backend,
            precision=precision,
            threads=threads,
            max_concurrency=max_concurrency,
            device=device,
            shapes=shapes,
        )
        if lora_ready:
            pipe.loras.prepare()
        for path, scale in specs:
            pipe.load_lora(path, scale=scale)
        return pipe

    @property
    def precision(self) -> str:
        """The precision the engines run in (what the backend compiled here)."""
        return self.engines.precision

    @property
    def tokenizer(self):
        """The (first) text encoder's tokenizer."""
        return self.prompts.tokenizer

    @property
    def tokenizers(self) -> dict:
        """Each text encoder's tokenizer, by encoder."""
        return self.prompts.tokenizers

    @property
    def exact(self) -> bool:
        """Whether this pipeline runs the exact path (fp32 graphs in fp32, matching diffusers)."""
        return self.precision == "fp32" and not exported_in_fp16(self.manifest)

    @property
    def device(self) -> str:
        """'cpu', or 'cuda:N' for the GPU backends."""
        engines = self.engines.primary()
        if engines is None:  # a plan-set backend before its first call
            return f"cuda:{self._device_index or 0}"
        return "cpu" if engines.device == "cpu" else f"cuda:{engines.device_index}"

    @property
    def sessions(self) -> dict:
        """component -> session of the engines loaded most recently (empty before a plan-set
        backend's first call)."""
        engines = self.engines.primary()
        return {} if engines is None else engines.sessions

    @property
    def xp(self):
        """The array module of the main engines: numpy, or cupy on a GPU."""
        engines = self.engines.primary()
        return namespace("cuda") if engines is None else engines.xp

    @xp.setter
    def xp(self, module) -> None:
        self.engines.default().xp = module

    def plan(self, sampler: str, steps: int, strength: float) -> schedules.Plan:
        """The per-step coefficients of a call (its .steps: the UNet steps that run)."""
        return plan_for(self.manifest, sampler, steps, strength)

    def engines_for(self, height: int, width: int, batch: int) -> Engines:
        """The engines that run a call of `batch` images of height x width pixels."""
        return self.engines.for_call(height, width, batch)

    def wrap_sessions(self, wrap: Callable[[str, object], object]) -> None:
        """Replace every session, now and as plan sets load, by wrap(component, session)."""
        self.engines.wrap_sessions(wrap)

    def load_lora(self, path: str | Path, name: str | None = None, scale: float = 1.0) -> str:
        """Load a LoRA .safetensors (diffusers/PEFT or kohya) at `scale`, used from the next
        call as diffusers' load_lora_weights + fuse_lora(lora_scale=scale); its name."""
        return self.loras.load(path, name, scale)

    def set_lora_scales(self, scales: dict[str, float]) -> None:
        """Set loaded LoRAs' scales by name (0 turns one off), from the next call."""
        self.loras.adapters.set_scales(scales)

    def unload_lora(self, name: str) -> None:
        """Stop using and forget the LoRA `name`."""
        self.loras.adapters.unload(name)

    # --- the stages -------------------------------------------------------------------------

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
        """The UNet's text inputs (PromptEncoder.encode) on `engines` (default: the main)."""
        engines = engines or self.engines.default()
        return self.prompts.encode(prompt, negative_prompt, cfg, engines, prompt_2,
                                   negative_prompt_2)  # fmt: skip

    def encode_image(
        self,
        pixels: np.ndarray,
        rng: TorchCompatibleGenerator,
        engines: Engines | None = None,
        chunk: int | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        """Scaled latents of the images (`chunk` per encoder call at most): from a KL encoder's
        moments, a sample mean + std * eps (one draw of the generator); from a tiny encoder
        (TAESD), its latents as they are. `should_stop` is asked before each encoder call."""
        engines = engines or self.engines.default()
        xp, encoder = engines.xp, engines.sessions["vae_encoder"]
        chunk = chunk or len(pixels)
        outs = []
        for j in range(0, len(pixels), chunk):
            stop_point(should_stop, "encoding the image")
            outs.append(encoder.run({"sample": pixels[j : j + chunk]}))
        out = {
            name: outs[0][name] if len(outs) == 1 else xp.concatenate([o[name] for o in outs])
            for name in outs[0]
        }
        if "latents" in out:
            z = check_finite(out["latents"], "VAE encoder output", engines)
        else:
            moments = check_finite(out["latent_parameters"], "VAE encoder output", engines)
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
        control_run: ControlRun | None = None,
        mask_run: MaskRun | None = None,
    ) -> np.ndarray:
        """Noise the latents to the plan's first timestep, then run the sampler over the UNet
        (`chunk` images per UNet call at most: the images are independent, so memory, not
        the result, depends on it; `conditioning`: extra UNet inputs, one row per image;
        `control_run`: the ControlNet whose residuals steer it; `mask_run`: the masks that
        say what is repainted)."""
        engines = engines or self.engines.default()
        xp, unet = engines.xp, engines.sessions["unet"]
        n = latents.shape[0]
        chunk = chunk or n
        cfg = embeddings.shape[0] == 2 * n
        eps = xp.asarray(rng.randn(latents.shape))
        if mask_run is None:
            x = samplers.add_noise(latents, eps, plan)
        else:  # (diffusers' inpainting starts its own way and encodes the masked image now)
            x = mask_run.start(latents, eps, plan)
        if xp is not np:  # the loop's noise goes to the device in one copy, drawn in order
            rng = PredrawnNoise(rng, latents.shape, samplers.noise_draws(plan), xp)
        flags = []  # (step, flag), read once after the loop: no host sync inside it

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
            x_in = mask_run.unet_input(x_in, j) if mask_run else x_in
            if cfg:
                emb = xp.concatenate([emb, embeddings[n + j : n + j + len(x_in)]])
                x_in = xp.concatenate([x_in, x_in])
            t = xp.full(x_in.shape[0], plan.timesteps[i], dtype=np.float32)
            feeds.update(sample=x_in, timestep=t, encoder_hidden_states=emb)
            session = unet
            if control_run is not None:
                session = control_run.step(feeds, i, j, len(emb) // (1 + cfg), cfg, unet)
            out = session.run(feeds)["out_sample"]
            flags.append((i, finite(out)))
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

        after = mask_run.after_step if mask_run else None
        x = samplers.SAMPLE[plan.sampler](denoise, x, plan, rng, after)
        for i, ok in flags:
            if not bool(ok):
                raise nan_error(f"UNet output at step {i + 1}", engines)
        return x

    def decode(
        self,
        latents: np.ndarray,
        engines: Engines | None = None,
        chunk: int | None = None,
        should_stop: Callable[[], bool] | None = None,
        tile_size: int | None = None,
    ) -> np.ndarray:
        """uint8 NHWC images from latents, decoded `chunk` images at a time (`should_stop` is
        asked before each decoder call), in tiles of `tile_size` pixels if given (vae_tiles)."""
        engines = engines or self.engines.default()
        scaled = latents / np.float32(self.manifest.vae_scaling_factor)
        chunk, decoded, factor = chunk or len(scaled), [], self.manifest.vae_scale_factor
        for j in range(0, len(scaled), chunk):
            stop_point(should_stop, "decoding the images")
            decoder, part = engines.sessions["vae_decoder"], scaled[j : j + chunk]
            pixels = vae_tiles.decode_tiled(decoder, part, tile_size, factor, engines.xp)
            decoded.append(to_host(images.to_uint8(check_finite(pixels, "decoded image", engines))))
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
        control_image: Image.Image | str | Path | list | None = None,
        controlnet_conditioning_scale: float | list[float] = 0.8,
        control_guidance_start: float | list[float] = 0.0,
        control_guidance_end: float | list[float] = 1.0,
        control_preprocess: str | None = None,
        mask_image: Image.Image | str | Path | None = None,
        mask_invert: bool = False,
        mask_blur: int | None = None,
        padding_mask_crop: int | None = None,
        keep_unmasked: bool = False,
        masked_content: str | None = None,
        lora_scales: dict | str | None = None,
        vae_tile_size: int | None = None,
        *,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[Image.Image]:
        """Transform `image` toward `prompt`; the same seed gives diffusers' image for it.

        Each image's `info` holds the settings, the seed (drawn when none was given), and the
        backend and precision that made it (`fastimg:*` keys, saved as PNG text by the CLI).
        SDXL folders also take StableDiffusionXLImg2ImgPipeline's `prompt_2`,
        `negative_prompt_2`, `original_size`, `crops_coords_top_left`, `target_size` (base) and
        `aesthetic_score`, `negative_aesthetic_score` (refiner); None means diffusers' default.
        Folders with a ControlNet take StableDiffusionControlNetImg2ImgPipeline's
        `control_image` (without one, the plain UNet runs), `controlnet_conditioning_scale`,
        `control_guidance_start` and `control_guidance_end`, and fastimg's `control_preprocess`
        ("canny", "scribble": the control image made first; from `image` without one); with
        several ControlNets, lists in their order (MultiControlNetModel: residuals summed).
        `mask_image` inpaints as StableDiffusionInpaintPipeline: white is repainted, black kept
        (`mask_invert` swaps); inpainting folders (a 9-channel UNet) need one, plain ones take
        one too. `mask_blur` blurs it first (mask_processor.blur), `padding_mask_crop`
        transforms only the masked region with that padding and pastes it back, `keep_unmasked`
        pastes the original pixels back outside the (blurred) mask, `masked_content` (A1111's:
        "original", "fill", "latent_noise", "latent_nothing") is what the masked region starts
        from. `lora_scales` ({name: scale} of loaded LoRAs, the others off) overrides the loaded
        scales for this call. `vae_tile_size` decodes in tiles of that many pixels.
        `callback(step, total)` follows the UNet's steps; `should_stop()`, asked between the
        engine calls, raises Cancelled when it says so (call_many's).
        """
        request = self._prepare(
            prompt=prompt,
            image=image,
            strength=strength,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            negative_prompt=negative_prompt,
            num_images_per_prompt=num_images_per_prompt,
            seed=seed,
            scheduler=scheduler,
            prompt_2=prompt_2,
            negative_prompt_2=negative_prompt_2,
            original_size=original_size,
            crops_coords_top_left=crops_coords_top_left,
            target_size=target_size,
            aesthetic_score=aesthetic_score,
            negative_aesthetic_score=negative_aesthetic_score,
            control_image=control_image,
            controlnet_conditioning_scale=controlnet_conditioning_scale,
            control_guidance_start=control_guidance_start,
            control_guidance_end=control_guidance_end,
            control_preprocess=control_preprocess,
            mask_image=mask_image, mask_invert=mask_invert, mask_blur=mask_blur,
            padding_mask_crop=padding_mask_crop, keep_unmasked=keep_unmasked,
            masked_content=masked_content, lora_scales=lora_scales, vae_tile_size=vae_tile_size,
        )  # fmt: skip
        return self._run([request], callback, should_stop)[0]

    def call_many(
        self,
        calls: list[dict],
        callback: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[list[Image.Image]]:
        """Several calls (each a dict of __call__'s arguments less `callback`), those with the
        same image size, sampler, steps, strength and guidance run as one batch per engine
        call; each call's images are the ones __call__ gives it alone (its own seed's noise,
        prompt and image). Every call is checked before any runs. `should_stop`, asked between
        the stages and their engine calls (the UNet's steps: `callback`), raises Cancelled when it
        says so: a caller that no longer wants the images frees the engines within one call."""
        requests = [self._prepare(**call) for call in calls]
        groups: dict[tuple, list[int]] = {}
        for k, request in enumerate(requests):
            groups.setdefault(request.key, []).append(k)
        results: list[list[Image.Image]] = [[] for _ in requests]
        for members in groups.values():
            made = self._run([requests[k] for k in members], callback, should_stop)
            for k, images_made in zip(members, made, strict=True):
                results[k] = images_made
        return results

    def _prepare(self, image: Image.Image | str | Path, **arguments) -> Request:
        """One call's arguments (__call__'s, by name) checked, its seed drawn and its image
        read into pixels."""
        sdxl = {name: arguments.pop(name, None) for name in SDXL_ARGUMENTS}
        unknown = [name for name in arguments if name not in CALL_ARGUMENTS]
        if unknown:
            raise InputError(f"unknown argument {unknown[0]!r}")
        loras = self.loras.adapters.for_call(arguments.pop("lora_scales", None))
        settings = CallSettings(**arguments, sdxl=tuple(sdxl.items()))
        checked = check_call(self.manifest, settings)
        settings = checked.settings
        if isinstance(image, str | Path):
            image = images.load_image(image)
        if not isinstance(image, Image.Image):
            raise InputError(f"image must be a PIL image or a path, got {type(image).__name__}")
        seed = secrets.randbelow(SEED_LIMIT) if settings.seed is None else settings.seed
        negative_prompt = settings.negative_prompt
        if self.distilled and negative_prompt:
            log.warning(
                "an LCM-distilled model takes no negative prompt (as in diffusers): ignored"
            )
            negative_prompt = None
        limit = self.engines.side_limit(self.device, settings.vae_tile_size, self.max_side)
        pixels = images.to_pixels(image, self.manifest.vae_scale_factor, *limit)
        mask = prepare_mask(settings, pixels, self.manifest.vae_scale_factor, image)
        pixels = pixels if mask is None else mask.image_pixels  # (a crop's, "only masked")
        return Request(
            prompt=settings.prompt,
            negative_prompt=negative_prompt,
            micro=checked.micro,
            seed=seed,
            rng=TorchCompatibleGenerator(seed),
            pixels=pixels,
            count=settings.num_images_per_prompt,
            sampler=checked.sampler,
            plan=checked.plan,
            strength=settings.strength,
            steps=settings.num_inference_steps,
            guidance_scale=settings.guidance_scale,
            cfg=settings.guidance_scale > 1.0 and not self.distilled,
            control=prepare_control(
                settings, *pixels.shape[2:], image, self.engines, mask and mask.crop
            ),
            mask=mask,
            loras=loras,
            vae_tile_size=settings.vae_tile_size,
        )

    def _run(self, group: list[Request], callback, should_stop=None) -> list[list[Image.Image]]:
        """Run requests that share a key as one batch; each request's images, in order."""
        # 1. The engines for the call's shape, and how many images each engine call takes.
        first = group[0]
        height, width = first.pixels.shape[2], first.pixels.shape[3]
        counts = [request.count for request in group]
        total = sum(counts)
        engines = self.engines.for_call(height, width, total)
        chunk, held = self.engines.images_per_call(engines, first, total)
        give_back = self.engines.gives_back(engines, held)
        try:
            with self.loras.adapters.using(first.loras):
                decoded = self._images(group, engines, chunk, callback, should_stop, give_back)
        finally:
            self.engines.settle(engines, held, give_back)
        # 7. Each request's images, labelled with what made them.
        results, start = [], 0
        for request in group:
            control = request.control
            control = model_label(self.manifest, len(control.pixels)) if control is not None else {}
            model = {**self.model_info, **control, **self.loras.hashes(request.loras)}
            labels = request.labels(engines, model)
            made = []
            for k, array in enumerate(decoded[start : start + request.count]):
                result = Image.fromarray(array)
                result = request.mask.finish(result) if request.mask else result
                result.info.update(labels, **{"fastimg:index": k})
                made.append(result)
            results.append(made)
            start += request.count
        return results

    def _images(self, group, engines, chunk, callback, should_stop, give_back):
        """Steps 2-6 of `_run`: the group's decoded images as uint8 arrays, in order."""
        first = group[0]
        height, width = first.pixels.shape[2], first.pixels.shape[3]
        counts = [request.count for request in group]
        total = sum(counts)
        # GPU backends run all of the call's array work on their device and stream, in order;
        # a call far larger than the ones before gives its scratch memory back as it runs.
        with engines.activate(), giving_back_scratch(give_back):
            xp = engines.xp
            # 2. Text: each request's prompts encoded, stacked per image.
            texts = [
                self.encode_text(r.prompt, r.negative_prompt, first.cfg, engines,
                                 r.micro.get("prompt_2"), r.micro.get("negative_prompt_2"))
                for r in group
            ]  # fmt: skip
            hidden = [xp.repeat(t["encoder_hidden_states"], c, axis=0) for t, c in
                      zip(texts, counts, strict=True)]  # fmt: skip
            embeddings = conditioning.stack(hidden, counts, first.cfg, xp)
            # 3. The UNet's extra conditioning (timestep_cond, text_embeds, time_ids).
            extra = self._conditioning(group, texts, counts, height, width)
            # 4. The images' latents; plan-set backends' VAE encoders take one image a call.
            rngs = [r.rng for r in group]
            pixels = np.concatenate([r.pixels for r in group]) if len(group) > 1 else first.pixels
            per_encode = 1 if describe(engines.backend).plan_sets else chunk
            one_each = generators(rngs, [1] * len(group))
            if first.mask is None or encodes_image(self.manifest, first.strength):
                z = self.encode_image(pixels, one_each, engines, per_encode, should_stop)
                z = xp.repeat(z, counts, axis=0)
            else:  # an inpainting UNet at strength 1 starts from noise alone
                factor, channels = self.manifest.vae_scale_factor, self.manifest.latent_channels
                z = xp.zeros((total, channels, height // factor, width // factor), np.float32)
            # 5. Noise to the plan's first step, then the sampler loop over the UNet.
            noise = generators(rngs, counts)
            run = first.control and ControlRun(
                engines, self.manifest, [r.control for r in group], counts, first.plan.steps
            )
            masking = first.mask and MaskRun(
                self.manifest, [r.mask for r in group], counts, first.strength, xp,
                lambda p: self.encode_image(p, one_each, engines, per_encode, should_stop),
                one_each,
            )  # fmt: skip
            latents = self.denoise(z, embeddings, first.plan, first.guidance_scale, noise,
                                   callback, engines, chunk, extra, run, masking)  # fmt: skip
            # 6. Decode.
            return self.decode(latents, engines, chunk, should_stop, first.vae_tile_size)

    def _conditioning(self, group, texts, counts, height, width) -> dict:
        """The extra UNet inputs of the requests of a batch, one row per image."""
        aesthetics = bool(self.manifest.text_conditioning.get("requires_aesthetics_score"))
        calls = [
            conditioning.ConditioningCall(
                c, r.guidance_scale, r.cfg, height, width, t.get("text_embeds"), r.micro,
                aesthetics,
            )
            for r, t, c in zip(group, texts, counts, strict=True)
        ]  # fmt: skip
        return conditioning.build(self.conditioning, calls, counts, group[0].cfg)
