"""A component compiled for one call's shapes, as read against rewritten the way the
runtime rewrites it (fastimg.backends.openvino_rewrites), on OpenVINO:

    python -m fastimg_bench.rewrite_probe ENGINES [--component unet ...] [--size 512]
        [--precision bf16] [--shapes static] [--repeats 10] [-o OUT.json]

Each component's graph for static shapes (the one `--shapes static` runs) is compiled twice as
the runtime compiles it (compile_config), for the shapes of one call of a SIZE x SIZE image
(`--shapes dynamic`: the graph the runtime compiles for dynamic shapes, compiled so and rewritten
where the rewrite holds at every size, run on those shapes; float precisions only); after
a warm-up each, the two are timed in turn REPEATS times (a change in the machine's load falls on
both), and the rewritten output is compared with the one as read (relative RMS difference), and
each with the graph's in fp32.

`--rewrite` names the rewrite probed: one of the runtime's (projection-slices, the default, or
upsampled-convolutions: each convolution of a nearest 2x upsampling run per output phase,
fastimg.backends.openvino_upsampling), its other rewrites made on both sides. `--rewrite
attention-heads` probes a rewrite the runtime does not make: each attention's query
and key heads zero-padded to HEAD_WIDTH channels (fastimg_bench.head_padding), both
sides with the projections split as the runtime splits them (float precisions only).

With `--precision int8` the rewrite happens where the export does it, before quantizing: the
component's standard graph is quantized twice (a UNet's by `--int8-method`, a VAE's fully, by
NNCF, as `fastimg export --int8` quantizes them), as read and rewritten, on CALIBRATION_CALLS
random inputs of a CALIBRATION_SIZE image (the speed does not depend on what it is calibrated
on).
"""

import argparse
import statistics
import sys

import numpy as np

from . import record
from .group_norm_probe import request_for
from .layers import feeds_for

LABELS = ("as read", "rewritten")
PROBED = ("projection-slices", "upsampled-convolutions", "attention-heads")


def rewrite(model, label: str, probed: str, head_width: int) -> int:
    """Rewrite `model` as side `label` of probing rewrite `probed`: how many parts the probed
    rewrite changed (0 on the side as read)."""
    from fastimg.backends import openvino_rewrites

    from .head_padding import pad_attention_heads

    if probed == "attention-heads":
        openvino_rewrites.rewrite(model)  # what the runtime compiles for static shapes
        return pad_attention_heads(model, head_width) if label == "rewritten" else 0
    openvino_rewrites.folded(model)
    counted = 0
    for name, made in openvino_rewrites.REWRITTEN_BY.items():  # the others on both sides
        if name != probed:
            made(model)
        elif label == "rewritten":
            counted = made(model)
    return counted


def graphs_for(
    path, feeds: dict, precision: str, method: str, calibration: list[dict],
    probed: str = "projection-slices", head_width: int = 64, component: str = "unet",
    shapes: str = "static",
) -> dict:  # fmt: skip
    """The graph at `path` as read and rewritten by `probed`, for the shapes of `feeds` (with
    `shapes` dynamic: for every size; for int8: each quantized on `calibration`, of their own
    shapes, as the export quantizes `component`; a UNet by `method`): openvino.Models, by
    label."""
    import openvino as ov

    graphs = {}
    for label in reversed(LABELS):  # (the rewritten first: nothing quantized if it finds none)
        model = ov.Core().read_model(str(path))
        if precision != "int8" and shapes == "static":  # rewritten as the runtime does
            model.reshape({name: ov.PartialShape(list(a.shape)) for name, a in feeds.items()})
        if rewrite(model, label, probed, head_width) == 0 and label == "rewritten":
            raise SystemExit(f"error: {path} has nothing that --rewrite {probed} rewrites")
        if precision == "int8":
            model = quantized(component, model, calibration, method)
        graphs[label] = model
    return {label: graphs[label] for label in LABELS}


def quantized(component: str, model, calibration: list[dict], method: str):
    """`model` quantized as the export quantizes `component`: a VAE's fully
    (int8_components), a UNet's by `method`."""
    from fastimg_export.int8_components import METHODS, quantize_read
    from fastimg_export.quantize import quantize_model

    if component in METHODS:
        return quantize_read(component, model, calibration)
    return quantize_model(model, calibration, method)


def requests_for(graphs: dict, feeds: dict, precision: str, shapes: str = "static") -> dict:
    """An infer request of each of `graphs`, compiled for the shapes of `feeds` (`shapes`
    static) or as they are, by label."""
    import openvino as ov

    from fastimg.backends.openvino import compile_config

    core, requests = ov.Core(), {}
    for label, model in graphs.items():
        if shapes == "static":
            model.reshape({name: ov.PartialShape(list(a.shape)) for name, a in feeds.items()})
        config = compile_config(precision, None, 1)
        requests[label] = core.compile_model(model, "CPU", config).create_infer_request()
    return requests


def fp32_output(path, feeds: dict) -> np.ndarray:
    """The first output of the graph at `path` as read, in fp32, on `feeds`."""
    return request_for(path, feeds, "fp32", shapes="dynamic").infer(feeds)[0].copy()


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
    p.add_argument("--shapes", default="static", choices=("static", "dynamic"))
    p.add_argument("--rewrite", default=PROBED[0], choices=PROBED)
    p.add_argument("--head-width", type=int, default=64, help="--rewrite attention-heads")
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
    from fastimg_export import int8_components
    from fastimg_export.int8_choice import alternated_seconds
    from fastimg_export.quantize import UNET_METHODS, relative_rms

    args = parser().parse_args(argv)
    if args.rewrite == "attention-heads" and args.precision == "int8":
        parser().error("--rewrite attention-heads rewrites float graphs: --precision fp32 or bf16")
    if args.shapes == "dynamic" and args.precision == "int8":
        parser().error("--shapes dynamic probes float graphs: --precision fp32 or bf16")
    if args.shapes == "dynamic" and args.rewrite == "attention-heads":
        parser().error("--rewrite attention-heads is probed for static shapes: leave out --shapes")
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
            variant = component_variant(
                "openvino", manifest, component, args.precision, args.shapes
            )
        feeds = feeds_for(manifest, component, args.size, 1)
        path = manifest.path(component, variant)
        graphs = graphs_for(path, feeds, args.precision, method, calibration, args.rewrite,
                            args.head_width, component, args.shapes)  # fmt: skip
        requests = requests_for(graphs, feeds, args.precision, args.shapes)
        del graphs
        out = {label: r.infer(feeds)[0].copy() for label, r in requests.items()}
        reference = fp32_output(path, feeds)
        seconds = alternated_seconds(requests, feeds, 0, args.repeats)
        median = {label: statistics.median(s) for label, s in seconds.items()}
        row = {
            "component": component,
            "graph": str(manifest.path(component, variant).relative_to(manifest.folder)),
            "median_seconds": median,
            "speed_ratio": round(median["as read"] / median["rewritten"], 4),
            "relative_rms_difference": relative_rms(out["rewritten"], out["as read"]),
            "relative_rms_error_vs_fp32": {
                label: relative_rms(output, reference) for label, output in out.items()
            },
            "seconds": seconds,
        }
        if int8:
            row["int8_method"] = int8_components.METHODS.get(component, method)
            row["calibration"] = {"size": args.calibration_size, "calls": args.calibration_calls}
        rows.append(row)
        print(
            f"{component} {args.precision} {args.shapes} {args.size}: "
            f"as read {median['as read']:.3f} s, "
            f"rewritten ({args.rewrite}) {median['rewritten']:.3f} s ({row['speed_ratio']:.3f}x), "
            f"relative RMS difference {row['relative_rms_difference']:.2e}; against fp32: "
            + ", ".join(f"{k} {v:.2e}" for k, v in row["relative_rms_error_vs_fp32"].items())
        )
    if args.output:
        record.save(
            {
                "command": "python -m fastimg_bench.rewrite_probe "
                + " ".join(argv or sys.argv[1:]),
                "engines": str(args.engines),
                "size": args.size,
                "precision": args.precision,
                "shapes": args.shapes,
                "rewrite": args.rewrite,
                **({"head_width": args.head_width} if args.rewrite == "attention-heads" else {}),
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
