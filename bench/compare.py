"""Time one img2img job through diffusers and through fastimg, alternating, in one process.

    python -m fastimg_bench.compare --model MODEL_DIR --engines ENGINE_DIR --size 512 \
        --out bench/results/NAME.json

Same model, image, prompt, sampler, steps, strength, guidance and seed on both sides, after one
warm-up each; reports each side's end-to-end times, the ratio of medians, and the PSNR between
the two outputs. The full harness (per-stage times, memory, cold start) grows from here.
"""

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from fastimg.cli import EXAMPLE_IMAGE
from fastimg.images import load_image, psnr


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def run(args) -> dict:
    """Run the comparison described by parsed `args`; return the result record."""
    import diffusers
    import torch

    from fastimg.backends.onnxruntime import available_cores
    from fastimg.pipeline import Img2ImgPipeline
    from fastimg_export.loading import diffusers_scheduler, load_pipeline

    image = load_image(args.image).resize((args.size, args.size))
    job = dict(
        prompt=args.prompt,
        strength=args.strength,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
    )
    ref = load_pipeline(args.model)
    ref.set_progress_bar_config(disable=True)
    ref.scheduler = diffusers_scheduler(ref.scheduler.config, args.sampler)
    ours = Img2ImgPipeline.from_engines(args.engines)

    def diffusers_once():
        gen = torch.Generator("cpu").manual_seed(args.seed)
        return ref(image=image, generator=gen, **job).images[0]

    def fastimg_once():
        return ours(image=image, seed=args.seed, scheduler=args.sampler, **job)[0]

    times = {"diffusers": [], "fastimg": []}
    outputs = {}
    for _ in range(args.warmup):
        diffusers_once()
        fastimg_once()
    for _ in range(args.repeats):
        for name, once in (("diffusers", diffusers_once), ("fastimg", fastimg_once)):
            start = time.perf_counter()
            outputs[name] = once()
            times[name].append(time.perf_counter() - start)
    median = {k: statistics.median(v) for k, v in times.items()}
    diff = np.abs(np.asarray(outputs["diffusers"], int) - np.asarray(outputs["fastimg"], int))
    return {
        "command": " ".join(["python -m fastimg_bench.compare", *sys.argv[1:]]),
        "machine": {
            "cpu": _cpu_name(),
            "cores": available_cores(),
            "torch_threads": torch.get_num_threads(),
        },
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "onnxruntime": __import__("onnxruntime").__version__,
        },
        "job": {**job, "size": args.size, "sampler": args.sampler, "seed": args.seed},
        "seconds": times,
        "median_seconds": median,
        "speedup_vs_diffusers": median["diffusers"] / median["fastimg"],
        "psnr_db_vs_diffusers": psnr(outputs["diffusers"], outputs["fastimg"]),
        "max_pixel_diff": int(diff.max()),
    }


def main(argv=None) -> None:
    """Command-line entry: parse options, run, print and save the record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="diffusers model (folder or hub id)")
    parser.add_argument("--engines", required=True, help="fastimg engine folder of that model")
    parser.add_argument("--image", default=str(EXAMPLE_IMAGE))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--prompt", default="a watercolor painting of a cozy house at sunset")
    parser.add_argument("--sampler", default="ddim")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="write the record as JSON here")
    args = parser.parse_args(argv)
    record = run(args)
    text = json.dumps(record, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
