"""Whole img2img calls on several backends of one engine folder, taken in turn.

    python -m fastimg_bench.alternate ENGINES --backend openvino:bf16 \
        --backend openvino:bf16:static --size 256 --steps 2 --strength 0.5 --guidance 0 \
        --sampler euler_a --rounds 6 -o OUT.json

`fastimg bench` runs its sides one after another, so a load that changes meanwhile (another
process starting, a neighbour on a shared machine) falls on one side and not the other. Here
every backend is loaded at once and each round runs one call of each, in turn, after the
warm-up calls (a static shape compiles on its first call): a change in the load falls on all of
them alike, and the ratio of their medians is the backends' own. The machine's load average is
recorded every round.
"""

import argparse
import os
import statistics
import sys
import time
from datetime import UTC, datetime

from .contenders import parse_backend, parse_shapes
from .record import machine as machine_record
from .record import save
from .record import versions as package_versions

PROMPT = "a watercolor painting of a cozy house at sunset"


def parser() -> argparse.ArgumentParser:
    """The command line this module takes."""
    parser = argparse.ArgumentParser(
        prog="python -m fastimg_bench.alternate", description=__doc__.splitlines()[0]
    )
    parser.add_argument("engines")
    parser.add_argument("--backend", action="append", required=True, dest="backends",
                        help="backend:precision[:static], at least two; the first is the "
                        "reference the others' ratios are taken against")  # fmt: skip
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--guidance", type=float, default=0.0)
    parser.add_argument("--sampler", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("-o", "--output", help="the record (.json)")
    return parser


def load(engines: str, spec: str):
    """The pipeline of `engines` on backend `spec` (backend:precision[:shapes])."""
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    backend, precision = parse_backend(spec)
    return Img2ImgPipeline.from_engines(
        engines, backend=backend, precision=precision, shapes=parse_shapes(spec)
    )


def alternate(calls: dict, warmup: int, rounds: int, log=print) -> dict:
    """Seconds of each call in `calls` (label -> function), `rounds` times each, taken in turn
    after `warmup` calls each; with the 1-minute load average at each round."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    seconds = {label: [] for label in calls}
    load = []
    for index in range(rounds):
        for label, call in calls.items():
            started = time.perf_counter()
            call()
            seconds[label].append(time.perf_counter() - started)
        load.append(os.getloadavg()[0])
        shown = ", ".join(f"{label} {values[-1]:.3f} s" for label, values in seconds.items())
        log(f"round {index + 1}/{rounds}: {shown} (load {load[-1]:.1f})")
    return {"seconds": seconds, "load_average_1min": load}


def summary(seconds: dict) -> dict:
    """Each label's median seconds and its ratio to the first label's (above 1: faster)."""
    medians = {label: statistics.median(values) for label, values in seconds.items()}
    reference = next(iter(medians.values()))
    return {
        label: {"median_seconds": median, "speed_vs_first": reference / median}
        for label, median in medians.items()
    }


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if len(set(args.backends)) < 2:
        print("error: give at least two different --backend to alternate", file=sys.stderr)
        return 2
    from fastimg.media.images import EXAMPLE_IMAGE, load_image

    image = load_image(EXAMPLE_IMAGE).resize((args.size, args.size))
    job = dict(prompt=args.prompt, image=image, strength=args.strength,
               num_inference_steps=args.steps, guidance_scale=args.guidance,
               scheduler=args.sampler, seed=args.seed)  # fmt: skip
    pipes = {spec: load(args.engines, spec) for spec in args.backends}
    labels = {spec: f"{pipe.backend}:{pipe.precision}:{parse_shapes(spec)}"
              for spec, pipe in pipes.items()}  # fmt: skip
    calls = {labels[spec]: (lambda p=pipe: p(**job)) for spec, pipe in pipes.items()}
    measured = alternate(calls, args.warmup, args.rounds)
    record = {
        "command": "python -m fastimg_bench.alternate " + " ".join(argv or sys.argv[1:]),
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine_record(),
        "versions": package_versions(),
        "engines": args.engines,
        "job": {k: v for k, v in job.items() if k != "image"} | {"size": args.size},
        "warmup": args.warmup,
        "rounds": args.rounds,
        **measured,
        "sides": summary(measured["seconds"]),
    }
    for label, side in record["sides"].items():
        print(f"{label:<28} median {side['median_seconds']:.3f} s  "
              f"{side['speed_vs_first']:.2f}x the first")  # fmt: skip
    if args.output:
        save(record, args.output)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
