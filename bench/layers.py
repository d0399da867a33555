"""Where a component's time goes on OpenVINO: its performance counters, per layer type.

    python -m fastimg_bench.layers ENGINES [COMPONENT] [SIZE] [PRECISION] [--shapes static]
        [--ov-config KEY=VALUE ...] [--graph PATH]

compiles COMPONENT (default unet) as the runtime does, runs it on one call of a SIZE x SIZE
image (the UNet with a CFG batch of 2 when --cfg is given, else 1) and prints the time per
executed layer type and the slowest layers, from OpenVINO's PERF_COUNT profiling.

`--graph PATH` profiles another graph of that component on the same inputs, compiled as it is
(no rewrite of the runtime's), with the same properties: the IR optimum-intel converts from torch
(its peer cache's ir-*/unet/openvino_model.xml, bench/peers/README.md), to set beside ours.
"""

import argparse
import sys
import time
from collections import defaultdict

import numpy as np

from . import ov_config


def feeds_for(manifest, component: str, size: int, batch: int) -> dict[str, np.ndarray]:
    """Random inputs of one call of `component` for a size x size image."""
    spec = manifest.components[component]
    latent = size // manifest.vae_scale_factor
    dims = {
        "batch": batch,
        "height": size,
        "width": size,
        "latent_height": latent,
        "latent_width": latent,
        "sequence": 77,
    }
    rng = np.random.default_rng(0)
    feeds = {}
    for name, tensor in spec["inputs"].items():
        shape = [_dimension(d, dims) if isinstance(d, str) else d for d in tensor["shape"]]
        if tensor["dtype"].startswith("int"):
            feeds[name] = rng.integers(0, 1000, size=shape).astype(tensor["dtype"])
        elif name == "timestep":
            feeds[name] = np.full(shape, 500.0, dtype=np.float32)
        else:
            feeds[name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _dimension(name: str, dims: dict) -> int:
    """A named dimension's size: `dims`'s, or a ControlNet residual's (latent_height_div4),
    as the runtime sizes it."""
    from fastimg.engine_folder.profiles import divided, divided_dimension

    base, divisor = divided_dimension(name)
    return divided(dims[base], divisor)


def profile(
    engines: str, component: str, size: int, precision: str, shapes: str, batch: int,
    extra: dict | None = None, graph: str | None = None,
):  # fmt: skip
    """(seconds of one call, per-type rows, slowest layers) from OpenVINO's counters, compiled
    as the runtime compiles plus the `extra` properties (`graph`: that graph, as it is)."""
    import openvino as ov

    from fastimg.backends import component_variant
    from fastimg.backends.openvino import compile_config
    from fastimg.backends.openvino_rewrites import rewrite
    from fastimg.engine_folder.manifest import load_manifest

    manifest = load_manifest(engines)
    variant = component_variant("openvino", manifest, component, precision, shapes)
    core = ov.Core()
    model = core.read_model(graph or str(manifest.path(component, variant)))
    feeds = feeds_for(manifest, component, size, batch)
    if graph is not None:
        feeds = feeds_by_port(model, feeds)
    if shapes == "static":
        model.reshape({name: ov.PartialShape(list(a.shape)) for name, a in feeds.items()})
        if graph is None:
            rewrite(model)  # as the runtime compiles a graph for static shapes
    config = {**compile_config(precision, None, 1), "PERF_COUNT": True, **(extra or {})}
    request = core.compile_model(model, "CPU", config).create_infer_request()
    request.infer(feeds)  # the first call allocates
    start = time.perf_counter()
    request.infer(feeds)
    seconds = time.perf_counter() - start
    by_type = defaultdict(lambda: [0.0, 0])
    layers = []
    for info in request.profiling_info:
        if info.status != info.Status.EXECUTED:
            continue
        took = info.real_time.total_seconds()
        key = f"{info.node_type} ({info.exec_type})"
        by_type[key][0] += took
        by_type[key][1] += 1
        layers.append((took, info.node_name, key))
    rows = sorted(by_type.items(), key=lambda item: item[1][0], reverse=True)
    return seconds, rows, sorted(layers, reverse=True)


def feeds_by_port(model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`feeds` renamed to `model`'s input names and cast to their element types; an input the
    feeds lack is named in the error."""
    matched = {}
    for port in model.inputs:
        name = next((n for n in port.get_names() if n in feeds), None)
        if name is None:
            raise SystemExit(
                f"error: the graph's input {port.get_any_name()} is not one of the component's "
                f"({', '.join(feeds)})"
            )
        matched[port.get_any_name()] = feeds[name].astype(port.get_element_type().to_dtype())
    return matched


def parser() -> argparse.ArgumentParser:
    """The command line this module takes."""
    parser = argparse.ArgumentParser(
        prog="python -m fastimg_bench.layers", description=__doc__.splitlines()[0]
    )
    parser.add_argument("engines")
    parser.add_argument("component", nargs="?", default="unet")
    parser.add_argument("size", nargs="?", type=int, default=512)
    parser.add_argument("precision", nargs="?", default="fp32")
    parser.add_argument("--shapes", default="dynamic", choices=("dynamic", "static"))
    parser.add_argument("--cfg", action="store_true", help="a UNet batch of 2 (guidance)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--graph", help="profile this graph of the component, as it is")
    ov_config.add_option(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Print the profile of one component call."""
    args = parser().parse_args(argv)
    batch = 2 if args.cfg and args.component == "unet" else 1
    seconds, rows, layers = profile(
        args.engines, args.component, args.size, args.precision, args.shapes, batch,
        ov_config.parse(args.ov_config), args.graph,
    )  # fmt: skip
    total = sum(r[1][0] for r in rows)
    print(
        f"{args.component}{f' ({args.graph})' if args.graph else ''} {args.size}x{args.size} "
        f"batch {batch} {args.precision} "
        f"{args.shapes}{''.join(f' {pair}' for pair in args.ov_config)}: {seconds:.3f} s per "
        f"call, {total:.3f} s in counted layers"
    )
    print(f"{'layer type (kernel)':<58}{'count':>6}{'seconds':>9}{'share':>7}")
    for key, (took, count) in rows[: args.top]:
        print(f"{key[:57]:<58}{count:>6}{took:>9.3f}{100 * took / total:>6.1f}%")
    print("\nslowest layers:")
    for took, name, key in layers[:15]:
        print(f"  {took:7.3f} s  {key[:40]:<40} {name[:80]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
