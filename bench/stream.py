"""The stream bench (`fastimg bench --stream`): frames per second, latency from a frame in to
its frame out (p50/p95/p99) and frames skipped, of fastimg's StreamEngine beside diffusers'
img2img pipeline run frame by frame on the same frames, settings and seed.

The clip is made from the job's image: a slow pan (a few pixels a frame) with every fourth
frame a repeat of the one before (a still moment, for the similarity filter). Frames are pushed
back to back, as fast as each side takes them; a frame's latency runs from its push to the
moment its output comes back (with the stream batch, some pushes later).
"""

import os
import time

import numpy as np
from PIL import Image

from fastimg.media.images import psnr

from .contenders import (
    DIFFUSERS,
    DiffusersSide,
    baseline_for,
    baselines,
    diffusers_name,
    parse_backend,
    parse_shapes,
)
from .job import BenchJob
from .record import machine as machine_record
from .record import versions as package_versions

PAN_PIXELS = 3  # how far the view moves each frame
STILL_EVERY = 4  # every this many frames, one repeats the frame before
OFF = " (options off)"  # the name's suffix of a side run with every stream option off


def clip(job: BenchJob, count: int) -> list[Image.Image]:
    """`count` frames of job.size: a pan across the job's image, with still frames."""
    margin = PAN_PIXELS * count
    source = Image.open(job.image).convert("RGB").resize((job.size + margin, job.size))
    frames, left = [], 0
    for k in range(count):
        if k % STILL_EVERY == STILL_EVERY - 1 and frames:
            frames.append(frames[-1].copy())
            continue
        frames.append(source.crop((left, 0, left + job.size, job.size)))
        left += PAN_PIXELS
    return frames


def spread(seconds: list[float]) -> dict:
    """Mean and the 50th, 95th and 99th percentiles of `seconds`."""
    values = np.asarray(seconds, dtype=np.float64)
    return {
        "mean": float(values.mean()),
        "p50": float(np.percentile(values, 50)),
        "p95": float(np.percentile(values, 95)),
        "p99": float(np.percentile(values, 99)),
    }


def run_fastimg(engines: str, job: BenchJob, spec: str, options: dict, frames: list,
                warmup: int, suffix: str = "") -> dict:  # fmt: skip
    """The StreamEngine over `frames` on backend `spec`, after `warmup` frames of another
    (`suffix`: added to the side's name)."""
    from fastimg.diffusion.pipeline import Img2ImgPipeline
    from fastimg.stream.engine import StreamEngine, StreamSettings

    backend, precision = parse_backend(spec)
    shapes = parse_shapes(spec)
    pipe = Img2ImgPipeline.from_engines(
        engines, backend=backend, precision=precision, shapes=shapes
    )
    shown = "" if shapes == "dynamic" else f" {shapes}"  # as the image bench names its sides
    settings = StreamSettings(job.prompt, strength=job.strength, steps=job.steps,
                              guidance=job.guidance, sampler=job.sampler, seed=job.seed,
                              **options)  # fmt: skip
    warm = StreamEngine(pipe, settings)
    for k, frame in enumerate(frames[:warmup]):
        warm.push(frame, k)
    warm.flush()
    engine = StreamEngine(pipe, settings)
    pushed, latency, pushes, outputs = {}, [], [], {}

    def came_out(out) -> None:
        latency.append(time.perf_counter() - pushed[out.tag])
        outputs[out.tag] = out

    start = time.perf_counter()
    for k, frame in enumerate(frames):
        pushed[k] = time.perf_counter()
        out = engine.push(frame, k)
        pushes.append(time.perf_counter() - pushed[k])
        if out is not None:
            came_out(out)
    for out in engine.flush():
        came_out(out)
    seconds = time.perf_counter() - start
    return {
        "name": f"fastimg stream {pipe.backend} {pipe.precision}{shown}{suffix}",
        "seconds": seconds,
        "fps": len(frames) / seconds,
        "frame_seconds": spread(pushes),
        "latency_seconds": spread(latency),
        "skipped": sum(out.skipped for out in outputs.values()),
        "backend_spec": spec,
        "images": [outputs[k].image for k in sorted(outputs)],
    }


def run_diffusers(model: str, job: BenchJob, frames: list, warmup: int, device: str = "cpu",
                  precision: str = "fp32") -> dict:  # fmt: skip
    """diffusers' img2img pipeline on each frame in turn (its latency: the frame's call), on
    `device` in `precision`."""
    side = DiffusersSide(model, job, device, precision)
    for frame in frames[:warmup]:
        side.image = frame
        side.once()
    seconds, images = [], []
    for frame in frames:
        side.image = frame
        image, took, _ = side.once()
        seconds.append(took)
        images.append(image)
    total = sum(seconds)
    return {
        "name": side.name,
        "seconds": total,
        "fps": len(frames) / total,
        "frame_seconds": spread(seconds),
        "latency_seconds": spread(seconds),
        "skipped": 0,
        "images": images,
    }


def run(model: str, engines: str, job: BenchJob, specs: list[str], options: dict,
        count: int, warmup: int, log, diffusers: bool = True) -> dict:  # fmt: skip
    """The stream bench's record: each fastimg backend's stream and diffusers' frames."""
    frames = clip(job, count)
    sides = {}
    for spec in specs:
        # with options, the same backend with every option off too, in the same run: their
        # ratio is the options' own gain, free of how loaded the machine was on another day
        for given in ({}, options) if options else ({},):
            log(f"streaming {count} frames on fastimg {spec} ({given or 'all options off'})")
            suffix = OFF if options and not given else ""
            side = run_fastimg(engines, job, spec, given, frames, warmup, suffix)
            sides[side["name"]] = side
    if diffusers:  # on the CPU in fp32 (every image's reference), and on each side's GPU
        for device, precision in baselines(specs):
            log(f"running diffusers ({device}, {precision}) on the {count} frames one by one")
            side = run_diffusers(model, job, frames, warmup, device, precision)
            sides[side["name"]] = side
    images = {name: side.pop("images") for name, side in sides.items()}
    reference = sides.get(DIFFUSERS)
    for name, side in sides.items():
        side["p95_latency_over_mean_frame"] = side["latency_seconds"]["p95"] / (
            side["seconds"] / count
        )
        off = sides.get(name + OFF)
        if off is not None:
            side["speedup_vs_options_off"] = side["fps"] / off["fps"]
        if "backend_spec" not in side:  # a diffusers side
            continue
        baseline = sides.get(diffusers_name(*baseline_for(side["backend_spec"])))
        if baseline is not None:  # diffusers on the same device (and GPU precision)
            side["speedup_vs_diffusers"] = side["fps"] / baseline["fps"]
            side["speedup_against"] = baseline["name"]
        if reference is not None and (name.endswith(OFF) or not options):
            first = psnr(images[name][0], images[DIFFUSERS][0])  # each frame the single call
            side["psnr_first_frame_vs_diffusers_db"] = first if first < float("inf") else "inf"
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average": list(os.getloadavg()),  # (other work on the machine slows both sides)
        "machine": machine_record(),
        "versions": package_versions("torch", "diffusers"),
        "model": model,
        "engines": str(engines),
        "job": job.to_dict(),
        "stream_options": options,
        "frames": count,
        "warmup_frames": warmup,
        "sides": sides,
    }


def table(record: dict) -> str:
    """The record as a text table."""
    lines = [f"{'side':<34}{'fps':>7}{'lat p50':>9}{'p95':>8}{'p99':>8}{'skip':>6}{'vs diff':>9}"]
    for name, side in record["sides"].items():
        lat = side["latency_seconds"]
        speedup = side.get("speedup_vs_diffusers")
        lines.append(
            f"{name:<34}{side['fps']:>7.2f}{lat['p50']:>9.2f}{lat['p95']:>8.2f}{lat['p99']:>8.2f}"
            f"{side['skipped']:>6}{'' if speedup is None else f'{speedup:.2f}x':>9}"
        )
    return "\n".join(lines)
