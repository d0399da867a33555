"""A component compiled for one call's exact shapes, as read against rewritten the way the
runtime rewrites it (fastimg.backends.openvino_rewrites), on OpenVINO:

    python -m fastimg_bench.rewrite_probe ENGINES [--component unet ...] [--size 512]
        [--precision bf16] [--repeats 10] [-o OUT.json]

Each component's graph for static shapes (the one `--shapes static` runs) is compiled twice as
the runtime compiles it (compile_config), for the shapes of one call of a SIZE x SIZE image; after
a warm-up each, the two are timed in turn REPEATS times (a change in the machine's load falls on
both), and the rewritten output is compared with the one as read (relative RMS difference).

With `--precision int8` the rewrite happens where the export does it, before quantizing: the
component's standard graph is quantized twice by `--int8-method` (NNCF, as `fastimg export
--int8` quantizes a UNet), as read and rewritten, on CALIBRATION_CALLS random inputs of a
CALIBRATION_SIZE image (the speed does not depend on what it is calibrated on).
"""

import argparse
import statistics
import sys

import numpy as np

from . import record
from .layers import feeds_for

LABELS = ("as read", "rewritten")


def graphs_for(path, precision: str, method: str, calibration: list[dict]) -> dict:
    """The graph at `path` as read and rewritten (for int8: each quantized by `method` on
    `calibration`): openvino.Models, by label."""
    import openvino as ov

    from fastimg.backends.openvino_rewrites import split_projections

    graphs = {}
    for label in LABELS:
        model = ov.Core().read_model(str(path))
        if label == "rewritten" and split_projections(model) == 0:
            raise SystemExit(f"error: {path} has nothing the runtime rewrites")
        if precision == "int8":
            from fastimg_export.quantize import quantize_model

            model = quantize_model(model, calibration, method)
        graphs[label] = model
    return graphs


def requests_for(graphs: dict, feeds: dict, precision: str) -> dict:
    """An infer request of each of `graphs`, compiled for the shapes of `feeds`, by label."""
    import openvino as ov

    from fastimg.backends.openvino import compile_config

    core, requests = ov.Core(), {}
    for label, model in graphs.items():
        model.reshape({name: ov.PartialShape(list(a.shape)) for name, a in feeds.items()})
        config = compile_config(precision, None, 1)
        requests[label] = core.compile_model(model, "CPU", config).create_infer_request()
    return requests


def calibration_feeds(manifest, component: str, size: int, calls: int) -> list[dict]:
    """`calls` random inputs of `component` for a size x size image, each its own."""
    rng = np.random.default_rng(1)
    feeds = []
    for _ in range(calls):
        feed = feeds_for(manifest, component, size, 1)
        for name, array in feed.items():
            if array.dtype == np.float32 and name != "timestep":
                feed[name] = rng.standard_normal(array.shape).astype(np.float32)
        feeds.append(feed)
    return feeds


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m fastimg_bench.rewrite_probe", description=(
        __doc__.split("\n\n")[0]))  # fmt: skip
    p.add_argument("engines")
    p.add_argument("--component", action="append", help="default: unet")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--precision", default="bf16", choices=("fp32", "bf16", "int8"))
    p.add_argument("--int8-method", default="full", choices=("full", "hybrid"))
    p.add_argument("--calibration-size", type=int, default=256)
    p.add_argument("--calibration-calls", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("-o", "--output", help="write the record as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    """Probe each component; print a line each, write the record."""
    from fastimg.backends import component_variant
    from fastimg.engine_folder.manifest import load_manifest
    from fastimg_export.int8_choice import alternated_seconds
    from fastimg_export.quantize import UNET_METHODS

    args = parser().parse_args(argv)
    manifest = load_manifest(args.engines)
    int8 = args.precision == "int8"
    method = UNET_METHODS[args.int8_method]
    rows = []
    for component in args.component or ["unet"]:
        variant, calibration = None, []  # int8: the standard graph, quantized as exported
        if int8:
            sizes = args.calibration_size, args.calibration_calls
            calibration = calibration_feeds(manifest, component, *sizes)
        else:
            variant = component_variant("openvino", manifest, component, args.precision, "static")
        feeds = feeds_for(manifest, component, args.size, 1)
        graphs = graphs_for(manifest.path(component, variant), args.precision, method, calibration)
        requests = requests_for(graphs, feeds, args.precision)
        del graphs
        out = {label: r.infer(feeds)[0].copy() for label, r in requests.items()}
        seconds = alternated_seconds(requests, feeds, 0, args.repeats)
        median = {label: statistics.median(s) for label, s in seconds.items()}
        difference = out["rewritten"] - out["as read"]
        row = {
            "component": component,
            "graph": str(manifest.path(component, variant).relative_to(manifest.folder)),
            "median_seconds": median,
            "speed_ratio": round(median["as read"] / median["rewritten"], 4),
            "relative_rms_difference": float(
                np.sqrt(np.mean(difference**2) / np.mean(out["as read"] ** 2))
            ),
            "seconds": seconds,
        }
        if int8:
            row["int8_method"] = method
            row["calibration"] = {"size": args.calibration_size, "calls": args.calibration_calls}
        rows.append(row)
        print(
            f"{component} {args.precision} static {args.size}: as read {median['as read']:.3f} s, "
            f"rewritten {median['rewritten']:.3f} s ({row['speed_ratio']:.3f}x), relative RMS "
            f"difference {row['relative_rms_difference']:.2e}"
        )
    if args.output:
        record.save(
            {
                "command": "python -m fastimg_bench.rewrite_probe "
                + " ".join(argv or sys.argv[1:]),
                "engines": str(args.engines),
                "size": args.size,
                "precision": args.precision,
                "repeats": args.repeats,
                "machine": record.machine(),
                "versions": record.versions(),
                "rows": rows,
            },
            args.output,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
