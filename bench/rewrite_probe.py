"""A component compiled for one call's exact shapes, as read against rewritten the way the
runtime rewrites it (fastimg.backends.openvino_rewrites), on OpenVINO:

    python -m fastimg_bench.rewrite_probe ENGINES [--component unet ...] [--size 512]
        [--precision bf16] [--repeats 10] [-o OUT.json]

Each component's graph for static shapes (the one `--shapes static` runs) is compiled twice as
the runtime compiles it (compile_config), for the shapes of one call of a SIZE x SIZE image; after
a warm-up each, the two are timed in turn REPEATS times (a change in the machine's load falls on
both), and the rewritten output is compared with the one as read (relative RMS difference).
"""

import argparse
import statistics
import sys

import numpy as np

from . import record
from .layers import feeds_for


def requests_for(path, feeds: dict, precision: str) -> dict:
    """Infer requests of the graph at `path` for the shapes of `feeds`: as read, rewritten."""
    import openvino as ov

    from fastimg.backends.openvino import compile_config
    from fastimg.backends.openvino_rewrites import split_projections

    core, requests = ov.Core(), {}
    for label in ("as read", "rewritten"):
        model = core.read_model(str(path))
        model.reshape({name: ov.PartialShape(list(a.shape)) for name, a in feeds.items()})
        if label == "rewritten" and split_projections(model) == 0:
            raise SystemExit(f"error: {path} has nothing the runtime rewrites")
        config = compile_config(precision, None, 1)
        requests[label] = core.compile_model(model, "CPU", config).create_infer_request()
    return requests


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m fastimg_bench.rewrite_probe", description=(
        __doc__.split("\n\n")[0]))  # fmt: skip
    p.add_argument("engines")
    p.add_argument("--component", action="append", help="default: unet")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("-o", "--output", help="write the record as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    """Probe each component; print a line each, write the record."""
    from fastimg.backends import component_variant
    from fastimg.engine_folder.manifest import load_manifest
    from fastimg_export.int8_choice import alternated_seconds

    args = parser().parse_args(argv)
    manifest = load_manifest(args.engines)
    rows = []
    for component in args.component or ["unet"]:
        variant = component_variant("openvino", manifest, component, args.precision, "static")
        feeds = feeds_for(manifest, component, args.size, 1)
        requests = requests_for(manifest.path(component, variant), feeds, args.precision)
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
