"""Peak memory of one engine call beyond the loaded engine, as fastimg.diffusion.memory
estimates it.

    python -m fastimg_bench.memory_probe ENGINES COMPONENT BACKEND SIZE BATCH

loads COMPONENT of ENGINES on BACKEND (fp32), runs it once at 64 px, then once at SIZE x SIZE
with BATCH images, and prints one JSON line: the growth of the process' peak resident memory
(VmHWM) over that call, and fastimg.diffusion.memory's estimate for it. Run each in a fresh process.
"""

import argparse
import json
import sys
import time

import numpy as np


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def parser() -> argparse.ArgumentParser:
    """The command line this module takes."""
    parser = argparse.ArgumentParser(
        prog="python -m fastimg_bench.memory_probe", description=__doc__.splitlines()[0]
    )
    parser.add_argument("engines", help="an engine folder")
    parser.add_argument("component", help="unet, vae_encoder, vae_decoder or a text encoder")
    parser.add_argument("backend", help="onnxruntime or openvino")
    parser.add_argument("size", type=int, help="image side in pixels")
    parser.add_argument("batch", type=int, help="images per call")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Measure one call; print its JSON line."""
    from fastimg.backends import LoadOptions, load_session
    from fastimg.diffusion.engine_set import estimate_kind
    from fastimg.diffusion.memory import call_bytes
    from fastimg.engine_folder.manifest import load_manifest

    args = parser().parse_args(argv)
    engines, component, backend = args.engines, args.component, args.backend
    size, batch = args.size, args.batch
    manifest = load_manifest(engines)
    spec = manifest.components[component]
    names = (*spec["inputs"], *spec["outputs"])
    session = load_session(
        backend, manifest.path(component, backend), LoadOptions(precision="fp32", names=names)
    )

    def feeds(side: int, n: int) -> dict:
        bound = {"batch": n, "height": side, "width": side, "sequence": 77}
        bound["latent_height"] = bound["latent_width"] = side // manifest.vae_scale_factor
        arrays = {}
        for name, io in spec["inputs"].items():
            shape = [bound[d] if isinstance(d, str) else d for d in io["shape"]]
            arrays[name] = np.zeros(shape, dtype=io["dtype"])
        return arrays

    session.run(feeds(64, 1))
    before = _peak_rss()
    start = time.perf_counter()
    session.run(feeds(size, batch))
    kind = estimate_kind(manifest, backend, "fp32")
    report = {
        "component": component,
        "backend": backend,
        "size": size,
        "batch": batch,
        "measured_mib": round((_peak_rss() - before) / 2**20),
        "estimated_mib": round(
            call_bytes(
                manifest,
                component,
                size,
                size,
                batch,
                component in kind["fused"],
                kind["scratch"],
                kind["variant"],
            )
            / 2**20
        ),
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
