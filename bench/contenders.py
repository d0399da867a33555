"""The contenders: diffusers (the baseline: torch fp32 on the CPU, or on the GPU of a GPU side)
and fastimg on one backend/precision."""

import time

from fastimg.backends.registry import GPU_BACKENDS

from .job import BenchJob
from .stages import StageClock, time_diffusers, time_fastimg

DIFFUSERS = "diffusers"


def parse_backend(spec: str) -> tuple[str, str]:
    """'openvino:bf16' -> ('openvino', 'bf16'); a bare backend name means fp32."""
    backend, _, rest = spec.partition(":")
    precision = rest.partition(":")[0]
    return backend, precision or "fp32"


def parse_shapes(spec: str) -> str:
    """'openvino:fp32:static' -> 'static': OpenVINO's shapes mode, dynamic unless named."""
    parts = spec.split(":")
    return parts[2] if len(parts) > 2 and parts[2] else "dynamic"


def diffusers_name(device: str = "cpu", precision: str = "fp32") -> str:
    """'diffusers' for the CPU fp32 baseline, else 'diffusers cuda fp16' and the like."""
    if (device, precision) == ("cpu", "fp32"):
        return DIFFUSERS
    return f"diffusers {device} {precision}"


def parse_diffusers(name: str) -> tuple[str, str]:
    """The inverse of diffusers_name: (device, precision)."""
    parts = name.split()
    return (parts[1], parts[2]) if len(parts) == 3 else ("cpu", "fp32")


def baseline_for(spec: str) -> tuple[str, str]:
    """(device, precision) of the diffusers run a fastimg side is compared with: the same GPU
    in fp16 for an fp16 GPU side, in fp32 for another GPU side; the CPU in fp32 otherwise."""
    backend, precision = parse_backend(spec)
    if backend not in GPU_BACKENDS:
        return "cpu", "fp32"
    return "cuda", "fp16" if precision == "fp16" else "fp32"


def baselines(specs: list[str]) -> list[tuple[str, str]]:
    """The diffusers runs a benchmark of `specs` needs: the CPU fp32 one (every side's PSNR
    reference), and each GPU side's on the same GPU in its precision."""
    needed = [("cpu", "fp32")]
    for spec in specs:
        if baseline_for(spec) not in needed:
            needed.append(baseline_for(spec))
    return needed


def controlnet_pipeline(pipe, controlnet: str):
    """diffusers' StableDiffusion(XL)ControlNetImg2ImgPipeline on `pipe`'s components and the
    ControlNet folder (or hub id) `controlnet`, checked to fit its UNet as the export checks."""
    from fastimg_export.control_calibration import controlnet_img2img
    from fastimg_export.loading import add_controlnet, load_controlnet

    if getattr(pipe, "controlnet", None) is not None:
        from fastimg.errors import InputError

        raise InputError(
            "the model already has a ControlNet: bench --controlnet takes a plain model (its "
            "UNet, VAE and text encoder) and the ControlNet apart"
        )
    add_controlnet(pipe, load_controlnet(controlnet), controlnet)
    return controlnet_img2img(pipe)


def control_arguments(job: BenchJob) -> dict:
    """The control image both sides take, by diffusers' name ({} without a ControlNet; the
    scale, start and end are both sides' defaults)."""
    image = job.control_image()
    return {} if image is None else {"control_image": image}


class DiffusersSide:
    """diffusers' StableDiffusionImg2ImgPipeline: on the CPU in fp32 (the baseline of every
    side), or on the GPU in the precision of the GPU sides it is compared with."""

    def __init__(self, model: str, job: BenchJob, device: str = "cpu", precision: str = "fp32"):
        import torch

        from fastimg_export.loading import diffusers_scheduler, load_pipeline

        self._torch, self.job = torch, job
        self.name, self.device = diffusers_name(device, precision), device
        self.pipe = load_pipeline(model)
        if job.controlnet is not None:  # the ControlNet img2img pipeline on the same components
            self.pipe = controlnet_pipeline(self.pipe, job.controlnet)
        if job.vae is not None:  # the same autoencoder as the fastimg engines
            from fastimg_export.loading import load_vae

            self.pipe.vae = load_vae(job.vae)
        if self.pipe.unet.config.get("time_cond_proj_dim") and job.sampler == "lcm":
            import diffusers  # an LCM-distilled model runs in diffusers' LCM img2img pipeline

            self.pipe = diffusers.LatentConsistencyModelImg2ImgPipeline(
                **self.pipe.components, requires_safety_checker=False
            )
        if (device, precision) != ("cpu", "fp32"):
            dtype = {"fp16": torch.float16, "fp32": torch.float32}[precision]
            self.pipe.to(device, dtype)
        self.pipe.set_progress_bar_config(disable=True)
        self.pipe.scheduler = diffusers_scheduler(self.pipe.scheduler.config, job.sampler)
        self.clock = StageClock()
        time_diffusers(self.pipe, self.clock)
        self.image = job.load_image()
        self.control = control_arguments(job)

    def once(self):
        """One image, and the per-stage seconds of making it."""
        job = self.job
        self.clock.reset()
        start = time.perf_counter()
        image = self.pipe(
            prompt=job.prompt,
            image=self.image,
            strength=job.strength,
            num_inference_steps=job.steps,
            guidance_scale=job.guidance,
            num_images_per_prompt=job.batch,
            generator=self._torch.Generator("cpu").manual_seed(job.seed),  # CPU noise anywhere
            **self.control,
        ).images[0]
        if self.device != "cpu":
            self._torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        return image, seconds, self.clock.totals(seconds)


class FastimgSide:
    """fastimg's pipeline on one backend and precision."""

    def __init__(
        self,
        engines: str,
        job: BenchJob,
        backend: str,
        precision: str,
        threads=None,
        shapes: str = "dynamic",
    ):
        from fastimg.diffusion.pipeline import Img2ImgPipeline

        self.job = job
        self.pipe = Img2ImgPipeline.from_engines(
            engines, backend=backend, precision=precision, threads=threads, shapes=shapes
        )
        engines = self.pipe.engines_for(job.size, job.size, job.batch)  # TensorRT: its plan set
        self.precision = engines.precision
        self.name = f"fastimg {engines.backend} {engines.precision}"
        if engines.plan_set:
            self.name += f" (plans {engines.plan_set})"
        self.spec = f"{self.pipe.backend}:{self.pipe.precision}"
        if shapes != "dynamic":
            self.name += f" {shapes}"
            self.spec += f":{shapes}"
        self.device = self.pipe.device
        self.clock = StageClock()
        time_fastimg(self.pipe, self.clock)
        self.image = job.load_image()
        self.control = control_arguments(job)

    def once(self):
        """One image, and the per-stage seconds of making it."""
        job = self.job
        self.clock.reset()
        start = time.perf_counter()
        image, *_ = self.pipe(
            prompt=job.prompt,
            image=self.image,
            strength=job.strength,
            num_inference_steps=job.steps,
            guidance_scale=job.guidance,
            num_images_per_prompt=job.batch,
            seed=job.seed,
            scheduler=job.sampler,
            **self.control,
        )
        seconds = time.perf_counter() - start
        return image, seconds, self.clock.totals(seconds)
