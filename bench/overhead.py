"""What one img2img call spends outside its engines: image conversion, noise, the samplers'
arithmetic, labels, and the PNG the CLI writes.

    python -m fastimg_bench.overhead ENGINES --size 512 --steps 2 --strength 0.5 --guidance 0 \
        --real 2 --repeats 30 -o OUT.json

The call runs `--real` times on the engines (each stage timed as `fastimg bench` times it, the
rest of the call being its overhead), then `--repeats` times with every engine replaced by a
replay of its first outputs (a copy each call, as a real run hands back fresh arrays): the whole
call is then its overhead, measured without the engines' noise. The PNG (with the labels) is
timed apart, and the replayed call is profiled (cProfile) for its top functions.
"""

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path


class Replay:
    """A session that runs the real one once per input shapes, then hands back copies."""

    def __init__(self, session):
        self.session, self.seen = session, {}
        self.input_names, self.output_names = session.input_names, session.output_names
        self.device = getattr(session, "device", "cpu")

    def run(self, feeds):
        key = tuple(sorted((name, a.shape) for name, a in feeds.items()))
        if key not in self.seen:
            self.seen[key] = self.session.run(feeds)
        return {name: array.copy() for name, array in self.seen[key].items()}


def test_image(size: int):
    """A smooth size x size RGB input."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size] / size
    waves = [np.sin(5 * x + 3 * y), np.cos(17 * x * y), np.sin(7 * x) * np.cos(4 * y)]
    return Image.fromarray(((np.stack(waves, -1) * 0.5 + 0.5) * 255).astype(np.uint8))


def png_seconds(image, repeats: int) -> list[float]:
    """Seconds to write `image` as the CLI does (labels.save_image, PNG), each repeat."""
    from fastimg.media.labels import save_image

    times = []
    with tempfile.TemporaryDirectory() as folder:
        for k in range(repeats):
            start = time.perf_counter()
            save_image(image, Path(folder) / f"{k}.png", dict(image.info))
            times.append(time.perf_counter() - start)
    return times


def top_functions(call, count: int = 15) -> list[str]:
    """cProfile's top functions of one `call()` by cumulative time, as text lines."""
    profiler = cProfile.Profile()
    profiler.runcall(call)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(count)
    return [line for line in out.getvalue().splitlines() if line.strip()][-count - 1 :]


def parser() -> argparse.ArgumentParser:
    """The command line this module takes."""
    parser = argparse.ArgumentParser(
        prog="python -m fastimg_bench.overhead", description=__doc__.splitlines()[0]
    )
    parser.add_argument("engines")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--shapes", default="dynamic", choices=("dynamic", "static", "auto"))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--guidance", type=float, default=0.0)
    parser.add_argument("--sampler", default="euler_a")
    parser.add_argument("--real", type=int, default=2, help="calls on the engines")
    parser.add_argument("--repeats", type=int, default=30, help="calls on replayed engines")
    parser.add_argument("-o", "--output", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Measure and write the record."""
    from fastimg.diffusion.pipeline import Img2ImgPipeline
    from fastimg_bench.record import machine, save, versions
    from fastimg_bench.stages import StageClock, time_fastimg

    args = parser().parse_args(argv)
    pipe = Img2ImgPipeline.from_engines(args.engines, backend=args.backend,
                                        precision=args.precision, shapes=args.shapes)  # fmt: skip
    image = test_image(args.size)
    job = dict(prompt="a watercolor fox", image=image, strength=args.strength, seed=1,
               num_inference_steps=args.steps, guidance_scale=args.guidance,
               scheduler=args.sampler)  # fmt: skip
    clock = StageClock()
    time_fastimg(pipe, clock)
    real = []
    for _ in range(args.real):
        clock.reset()
        start = time.perf_counter()
        (made,) = pipe(**job)
        seconds = time.perf_counter() - start
        real.append({**clock.totals(seconds), "call_s": seconds})
        print(json.dumps(real[-1]), flush=True)
    replays = {}
    pipe.wrap_sessions(lambda name, session: replays.setdefault(name, Replay(session)))
    pipe(**job)  # (each replay runs its engine once)
    replayed = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        (made,) = pipe(**job)
        replayed.append(time.perf_counter() - start)
    png = png_seconds(made, args.repeats)
    call = statistics.median(r["call_s"] for r in real[1:] or real)
    outside = statistics.median(replayed) + statistics.median(png)
    record = {
        "command": "python -m fastimg_bench.overhead " + " ".join(argv or sys.argv[1:]),
        "machine": machine(),
        "versions": versions(),
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "load_average": os.getloadavg(),
        "model": pipe.manifest.model_name,
        "vae": pipe.manifest.vae_kind,
        "backend": pipe.backend,
        "precision": pipe.precision,
        "shapes": args.shapes,
        "size": args.size,
        "real_calls": real,
        "replayed_call_s": {
            "median": round(statistics.median(replayed), 5),
            "min": round(min(replayed), 5),
        },  # fmt: skip
        "png_s": {"median": round(statistics.median(png), 5), "min": round(min(png), 5)},
        "outside_engines_s": round(outside, 5),
        "share_of_call": round(outside / call, 4),
        "profile_of_replayed_call": top_functions(lambda: pipe(**job)),
    }
    print(json.dumps({k: record[k] for k in ("replayed_call_s", "png_s", "share_of_call")}))
    save(record, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
