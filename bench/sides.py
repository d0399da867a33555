"""The contenders: diffusers (torch fp32, the baseline) and fastimg on one backend/precision."""

import time

from .job import Job
from .stages import StageClock, time_diffusers, time_fastimg

DIFFUSERS = "diffusers"


def parse_backend(spec: str) -> tuple[str, str]:
    """'openvino:bf16' -> ('openvino', 'bf16'); a bare backend name means fp32."""
    backend, _, precision = spec.partition(":")
    return backend, precision or "fp32"


class DiffusersSide:
    """diffusers' StableDiffusionImg2ImgPipeline on the CPU in fp32, the baseline."""

    name = DIFFUSERS

    def __init__(self, model: str, job: Job):
        import torch

        from fastimg_export.loading import diffusers_scheduler, load_pipeline

        self._torch, self.job = torch, job
        self.pipe = load_pipeline(model)
        self.pipe.set_progress_bar_config(disable=True)
        self.pipe.scheduler = diffusers_scheduler(self.pipe.scheduler.config, job.sampler)
        self.clock = StageClock()
        time_diffusers(self.pipe, self.clock)
        self.image = job.load_image()

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
            generator=self._torch.Generator("cpu").manual_seed(job.seed),
        ).images[0]
        seconds = time.perf_counter() - start
        return image, seconds, self.clock.totals(seconds)


class FastimgSide:
    """fastimg's pipeline on one backend and precision."""

    def __init__(self, engines: str, job: Job, backend: str, precision: str, threads=None):
        from fastimg.pipeline import Img2ImgPipeline

        self.job = job
        self.pipe = Img2ImgPipeline.from_engines(
            engines, backend=backend, precision=precision, threads=threads
        )
        self.name = f"fastimg {self.pipe.backend} {self.pipe.precision}"
        self.spec = f"{self.pipe.backend}:{self.pipe.precision}"
        self.clock = StageClock()
        time_fastimg(self.pipe, self.clock)
        self.image = job.load_image()

    def once(self):
        """One image, and the per-stage seconds of making it."""
        job = self.job
        self.clock.reset()
        start = time.perf_counter()
        (image,) = self.pipe(
            prompt=job.prompt,
            image=self.image,
            strength=job.strength,
            num_inference_steps=job.steps,
            guidance_scale=job.guidance,
            seed=job.seed,
            scheduler=job.sampler,
        )
        seconds = time.perf_counter() - start
        return image, seconds, self.clock.totals(seconds)
