"""The VAE alone: whole against tiled decoding, and OpenVINO's static shapes against dynamic.

    python -m fastimg_bench.vae ENGINES --size 512 --size 1024 --tile 256 \
        --side onnxruntime:fp32 --side openvino:fp32 --side openvino:bf16 --repeats 3 -o OUT.json

Tiles: each side's decoder (loaded as the runtime loads it) decodes one image's latents whole
and in tiles of each --tile, the variants alternated within each repeat; the record has each
variant's median seconds, its ratio to the whole decode of the same side in the same run, and
the tiled image's PSNR against the whole one. The latents are an encoded smooth test image.

Shapes (--shapes-size): the encoder and the decoder alone on OpenVINO, compiled with the
runtime's properties (PERFORMANCE_HINT LATENCY, INFERENCE_PRECISION_HINT) for dynamic shapes and
for the call's static shapes, and with PERFORMANCE_HINT THROUGHPUT (what --max-concurrency sets),
alternated likewise.
"""

import argparse
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime

import numpy as np


def smooth_image(side: int):
    """A smooth RGB test image (waves), as a PIL image."""
    from PIL import Image

    y, x = np.mgrid[0:side, 0:side] / side
    waves = [np.sin(5 * x + 3 * y), np.cos(17 * x * y), np.sin(7 * x) * np.cos(4 * y)]
    return Image.fromarray(((np.stack(waves, -1) * 0.5 + 0.5) * 255).astype(np.uint8))


def load(manifest, component: str, side: str, shapes: str = "dynamic"):
    """`component` loaded as the runtime loads it on side 'backend:precision'."""
    from fastimg.backends import component_options, component_variant, load_session

    backend, precision = side.split(":")
    options = component_options(backend, manifest, component, precision, shapes=shapes)
    path = manifest.path(
        component, component_variant(backend, manifest, component, precision, shapes)
    )
    return load_session(backend, path, options)


def latents_of(manifest, size: int) -> np.ndarray:
    """Unscaled latents (the posterior's mean) of the test image at size x size."""
    from fastimg.media.images import to_pixels

    encoder = load(manifest, "vae_encoder", "onnxruntime:fp32")
    pixels = to_pixels(smooth_image(size), manifest.vae_scale_factor, 4096)
    out = encoder.run({"sample": pixels})
    if "latents" in out:  # (TAESD: its latents, already unscaled)
        return out["latents"] / np.float32(manifest.vae_scaling_factor)
    return np.split(out["latent_parameters"], 2, axis=1)[0]


def alternated(variants: dict, repeats: int, warmup: int) -> dict:
    """{name: [seconds, ...]} of each variant (a callable), in turn within each repeat."""
    for _ in range(warmup):
        for run in variants.values():
            run()
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def summary(times: dict, base: str) -> dict:
    """Each variant's median seconds and its time as a multiple of `base`'s."""
    medians = {name: statistics.median(seconds) for name, seconds in times.items()}
    return {
        name: {"median_s": round(m, 4), "runs_s": [round(s, 4) for s in times[name]],
               "vs_" + base: round(m / medians[base], 3)}
        for name, m in medians.items()
    }  # fmt: skip


def tiles(manifest, sides, sizes, tile_sizes, repeats, warmup, log) -> list[dict]:
    """Whole against tiled decoding per side and size (see the module's docstring)."""
    from fastimg.diffusion.vae_tiles import decode_tiled
    from fastimg.media.images import psnr, to_uint8

    factor, rows = manifest.vae_scale_factor, []
    for size in sizes:
        z = latents_of(manifest, size)
        for side in sides:
            decoder = load(manifest, "vae_decoder", side)
            variants = {"whole": lambda d=decoder, z=z: decode_tiled(d, z, None, factor)}
            for t in (t for t in tile_sizes if t < size):
                variants[f"tiles_{t}"] = lambda d=decoder, z=z, t=t: decode_tiled(d, z, t, factor)
            times = alternated(variants, repeats, warmup)
            whole = to_uint8(decode_tiled(decoder, z, None, factor))
            row = {"size": size, "side": side, "variants": summary(times, "whole")}
            for t in (t for t in tile_sizes if t < size):
                tiled = to_uint8(decode_tiled(decoder, z, t, factor))
                row["variants"][f"tiles_{t}"]["psnr_vs_whole_db"] = round(psnr(whole, tiled), 2)
            log(json.dumps(row))
            rows.append(row)
            del decoder
    return rows


def ov_variants(manifest, component: str, feeds: dict, precision: str) -> dict:
    """{name: callable} of `component` compiled by OpenVINO: the runtime's properties with
    dynamic and with static shapes, and the THROUGHPUT hint with dynamic shapes."""
    import openvino as ov

    from fastimg.backends.openvino import compile_config
    from fastimg.backends.openvino_rewrites import rewrite

    core, path = ov.Core(), str(manifest.path(component, "openvino"))
    latency = compile_config(precision, None, 1)
    throughput = {**latency, "PERFORMANCE_HINT": "THROUGHPUT"}
    compiled = {}
    for name, config, static in (("dynamic", latency, False), ("static", latency, True),
                                 ("dynamic_throughput", throughput, False)):  # fmt: skip
        model = core.read_model(path)
        if static:  # rewritten as the runtime rewrites a graph compiled for static shapes
            model.reshape({port: ov.PartialShape(list(feeds[port.get_any_name()].shape))
                           for port in model.inputs})  # fmt: skip
            rewrite(model)
        compiled[name] = core.compile_model(model, "CPU", config).create_infer_request()
    return {name: (lambda r=request: r.infer(feeds)) for name, request in compiled.items()}


def shapes(manifest, precisions, size, repeats, warmup, log) -> list[dict]:
    """Static against dynamic shapes (and the THROUGHPUT hint) for the VAE's two halves."""
    rng = np.random.default_rng(0)
    latent = size // manifest.vae_scale_factor
    inputs = {
        "vae_encoder": {"sample": rng.uniform(-1, 1, (1, 3, size, size)).astype(np.float32)},
        "vae_decoder": {"latent_sample": rng.standard_normal(
            (1, manifest.latent_channels, latent, latent)).astype(np.float32)},
    }  # fmt: skip
    rows = []
    for precision in precisions:
        for component, feeds in inputs.items():
            variants = ov_variants(manifest, component, feeds, precision)
            times = alternated(variants, repeats, warmup)
            row = {"component": component, "size": size, "side": f"openvino:{precision}",
                   "variants": summary(times, "dynamic")}  # fmt: skip
            log(json.dumps(row))
            rows.append(row)
            del variants
    return rows


def parser() -> argparse.ArgumentParser:
    """The command line this module takes."""
    parser = argparse.ArgumentParser(
        prog="python -m fastimg_bench.vae", description=__doc__.splitlines()[0]
    )
    parser.add_argument("engines")
    parser.add_argument("--size", type=int, action="append", help="image side (repeatable)")
    parser.add_argument("--tile", type=int, action="append", default=[], help="tile, pixels")
    parser.add_argument("--side", action="append", help="backend:precision (repeatable)")
    parser.add_argument("--shapes-size", type=int, default=None, help="also time static shapes")
    parser.add_argument("--shapes-precision", action="append", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("-o", "--output", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Measure, print each row as it is made, and write the record."""
    from fastimg.engine_folder.manifest import load_manifest
    from fastimg_bench.record import machine, save, versions

    args = parser().parse_args(argv)
    manifest = load_manifest(args.engines)
    log = lambda line: print(line, flush=True)  # noqa: E731
    record = {
        "command": "python -m fastimg_bench.vae " + " ".join(argv or sys.argv[1:]),
        "machine": machine(),
        "versions": versions(),
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "load_average_start": os.getloadavg(),
        "model": manifest.model_name,
        "vae": manifest.vae_kind,
    }
    sides = args.side or ["onnxruntime:fp32"]
    if args.size:
        record["tiles"] = tiles(manifest, sides, args.size, args.tile, args.repeats,
                                args.warmup, log)  # fmt: skip
    if args.shapes_size:
        precisions = args.shapes_precision or ["fp32", "bf16"]
        record["shapes"] = shapes(manifest, precisions, args.shapes_size, args.repeats,
                                  args.warmup, log)  # fmt: skip
    record["load_average_end"] = os.getloadavg()
    save(record, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
