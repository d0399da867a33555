"""The exported GroupNorms against their per-channel reductions (fastimg_export.group_norm), on
OpenVINO:

    python -m fastimg_bench.group_norm_probe ENGINES [--component vae_decoder ...] [--size 512]
        [--precision bf16 ...] [--repeats 4] [--shapes static|dynamic] [-o OUT.json]

Each component's fp32 graph as exported and the same graph rewritten are compiled as the runtime
compiles them (compile_config), for the shapes of one call of a SIZE x SIZE image alone (static,
the default) or for any (dynamic); after a warm-up each, the two are timed in turn REPEATS times
(so that a change in the machine's load falls on both), and each precision's output is compared
with the exported graph's in fp32 (PSNR, outputs taken as [-1, 1] images, as the decoder's are).
The int8 graphs are not probed: they are quantized from the graph at export.
"""

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

from . import record
from .layers import feeds_for


def rewritten_copy(graph: Path) -> Path:
    """`graph` with its GroupNorms rewritten, written beside it (it reads the same external
    data, which OpenVINO reads only from the graph's own folder); the caller removes it."""
    import onnx

    from fastimg_export.group_norm import reduce_group_norms

    model = onnx.load(str(graph), load_external_data=False)
    if reduce_group_norms(model, graph.parent) == 0:
        raise SystemExit(f"error: {graph} has no GroupNorm to rewrite")
    out = graph.with_name("model.group-norm-probe.onnx")
    onnx.save(model, str(out))
    return out


def psnr(image, reference) -> float:
    """PSNR of two [-1, 1] arrays taken as images (clipped, not rounded to 8 bits), in dB."""
    from fastimg.media.images import psnr as image_psnr

    return image_psnr(*(np.clip((x + 1) / 2, 0, 1) * 255 for x in (image, reference)))


def request_for(path: Path, feeds: dict, precision: str, shapes: str = "static"):
    """An infer request of the graph at `path`, compiled as the runtime compiles it in
    `precision`, for the shapes of `feeds` (static) or for any (dynamic)."""
    import openvino as ov

    from fastimg.backends.openvino import compile_config
    from fastimg.backends.openvino_rewrites import rewrite

    core = ov.Core()
    model = core.read_model(str(path))
    if shapes == "static":  # rewritten as the runtime rewrites a graph for static shapes
        model.reshape({name: ov.PartialShape(list(a.shape)) for name, a in feeds.items()})
        rewrite(model)
    return core.compile_model(
        model, "CPU", compile_config(precision, None, 1)
    ).create_infer_request()


def probe(graphs: dict, feeds: dict, precision: str, repeats: int, shapes: str = "static") -> dict:
    """Each graph's seconds per call (after a warm-up, the graphs in turn) and output."""
    from fastimg_export.int8_choice import alternated_seconds

    requests = {label: request_for(p, feeds, precision, shapes) for label, p in graphs.items()}
    outputs = {label: request.infer(feeds)[0].copy() for label, request in requests.items()}
    return {"seconds": alternated_seconds(requests, feeds, 0, repeats), "outputs": outputs}


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m fastimg_bench.group_norm_probe", description=(
        __doc__.split("\n\n")[0]))  # fmt: skip
    p.add_argument("engines")
    p.add_argument("--component", action="append", help="default: vae_decoder")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--precision", action="append", help="fp32 or bf16 (default: bf16)")
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--shapes", choices=("static", "dynamic"), default="static")
    p.add_argument("-o", "--output", help="write the record as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    """Probe each component and precision; print a line each, write the record."""
    from fastimg.engine_folder.manifest import load_manifest

    args = parser().parse_args(argv)
    manifest = load_manifest(args.engines)
    components, precisions = args.component or ["vae_decoder"], args.precision or ["bf16"]
    command = "python -m fastimg_bench.group_norm_probe " + " ".join(argv or sys.argv[1:])
    rows = []
    for component in components:
        graph = manifest.path(component)
        feeds = feeds_for(manifest, component, args.size, 1)
        graphs = {"exported": graph, "reductions": rewritten_copy(graph)}
        try:
            reference = request_for(graph, feeds, "fp32").infer(feeds)[0].copy()
            for precision in precisions:
                got = probe(graphs, feeds, precision, args.repeats, args.shapes)
                median = {k: statistics.median(v) for k, v in got["seconds"].items()}
                row = {
                    "component": component,
                    "precision": precision,
                    "shapes": args.shapes,
                    "median_seconds": median,
                    "speed_ratio": round(median["exported"] / median["reductions"], 4),
                    "psnr_db_vs_exported_fp32": {
                        k: round(min(psnr(v, reference), 200.0), 2)
                        for k, v in got["outputs"].items()
                    },
                    "seconds": got["seconds"],
                }
                rows.append(row)
                print(
                    f"{component} {precision} {args.shapes} {args.size}: "
                    f"exported {median['exported']:.3f} s, "
                    f"reductions {median['reductions']:.3f} s ({row['speed_ratio']:.3f}x); "
                    f"PSNR vs fp32 {row['psnr_db_vs_exported_fp32']}"
                )
        finally:
            graphs["reductions"].unlink()
    if args.output:
        record.save(
            {
                "command": command,
                "engines": str(args.engines),
                "size": args.size,
                "repeats": args.repeats,
                "machine": record.machine(),
                "versions": record.versions("onnx"),
                "rows": rows,
            },
            args.output,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
