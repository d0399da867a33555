"""Does a backend gain from running same-shape requests in one engine call? Measured.

    python -m fastimg_bench.batching ENGINES --backend onnxruntime:fp32 --size 256 --batch 1,2,4

For each batch size B, B requests of one shape with their own images, prompts and seeds run
as the server runs them when it batches (`Img2ImgPipeline.call_many`: one text, VAE encoder,
UNet and VAE decoder call for all B), alternating the sizes round by round after a warm-up of
each; the record gives the median seconds per image and the gain over B = 1. (Until 2026-11-26
this ran one request with B images, `num_images_per_prompt`, which encodes its one image once:
that overstated the gain for requests with images of their own.)
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

PROMPT = "a watercolour painting of a lighthouse"


def measure(engines: str, backend: str, precision: str, size: int, batches: list[int],
            steps: int, strength: float, guidance: float, repeats: int) -> dict:  # fmt: skip
    """Median seconds per image for each batch size, sizes alternated round by round."""
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    pipe = Img2ImgPipeline.from_engines(engines, backend=backend, precision=precision)
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        for _ in range(max(batches))
    ]
    job = dict(strength=strength, num_inference_steps=steps, guidance_scale=guidance)

    def run(batch: int) -> float:
        calls = [
            dict(prompt=f"{PROMPT}, {k}", image=images[k], seed=k, **job) for k in range(batch)
        ]
        started = time.perf_counter()
        pipe.call_many(calls)
        return (time.perf_counter() - started) / batch

    for batch in batches:  # warm-up: compiles and caches per shape
        run(batch)
    seconds = {batch: [] for batch in batches}
    for _ in range(repeats):
        for batch in batches:
            seconds[batch].append(run(batch))
    median = {batch: statistics.median(values) for batch, values in seconds.items()}
    base = median[batches[0]]
    return {
        "backend": pipe.backend,
        "precision": pipe.precision,
        "seconds_per_image": {str(b): round(median[b], 4) for b in batches},
        "all_seconds_per_image": {str(b): [round(v, 4) for v in seconds[b]] for b in batches},
        "gain_over_first": {str(b): round(base / median[b], 3) for b in batches},
    }


def parser() -> argparse.ArgumentParser:
    """The command line this module takes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("engines")
    parser.add_argument("--backend", action="append", required=True, help="backend:precision")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", default="1,2,4", help="batch sizes, the first the baseline")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--guidance", type=float, default=0.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("-o", "--out", type=Path, default=None, help="write the record here")
    return parser


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from .record import machine as machine_record

    batches = [int(b) for b in args.batch.split(",")]
    record = {
        "command": "python -m fastimg_bench.batching " + " ".join(argv or sys.argv[1:]),
        "machine": machine_record(),
        "job": {
            "size": args.size,
            "steps": args.steps,
            "strength": args.strength,
            "guidance": args.guidance,
            "repeats": args.repeats,
        },  # fmt: skip
        "sides": [],
    }
    for spec in args.backend:
        backend, _, precision = spec.partition(":")
        side = measure(args.engines, backend, precision or "auto", args.size, batches,
                       args.steps, args.strength, args.guidance, args.repeats)  # fmt: skip
        record["sides"].append(side)
        gains = ", ".join(f"x{b}: {g:.2f}" for b, g in side["gain_over_first"].items())
        print(f"{side['backend']} {side['precision']}: per image {side['seconds_per_image']} s; "
              f"gain {gains}")  # fmt: skip
    if args.out is not None:
        args.out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
