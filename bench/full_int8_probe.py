"""Speed probe: a UNet with every MatMul and convolution quantized to int8, activations too.

    python -m fastimg_bench.full_int8_probe ENGINES [SIZE]

fastimg's --int8 export quantizes convolutions fully but only compresses the MatMuls' weights
(their products stay in fp32). This probe asks whether quantizing the MatMuls fully would pay on
this CPU: it quantizes the exported fp32 UNet with NNCF on two random inputs (no SmoothQuant, so
that it fits beside the graph in 24 GiB), then prints one call's time per layer type from
OpenVINO's counters. Random calibration says nothing of quality: this measures speed only.
"""

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path


def parser() -> argparse.ArgumentParser:
    """The command line this module takes."""
    parser = argparse.ArgumentParser(
        prog="python -m fastimg_bench.full_int8_probe", description=__doc__.splitlines()[0]
    )
    parser.add_argument("engines")
    parser.add_argument("size", nargs="?", type=int, default=512)
    parser.add_argument("--top", type=int, default=8)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
    )

    from fastimg.backends.openvino import compile_config
    from fastimg.engine_folder.manifest import load_manifest

    from .layers import feeds_for

    logging.getLogger("nncf").setLevel(logging.WARNING)
    manifest = load_manifest(args.engines)
    core = ov.Core()
    feeds = [feeds_for(manifest, "unet", args.size, 1) for _ in range(2)]
    started = time.perf_counter()
    quantized = nncf.quantize(
        core.read_model(str(manifest.path("unet"))),
        nncf.Dataset(feeds),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(feeds),
        advanced_parameters=AdvancedQuantizationParameters(
            smooth_quant_alphas=AdvancedSmoothQuantParameters(convolution=-1, matmul=-1)
        ),
    )
    print(f"quantized in {time.perf_counter() - started:.0f} s", flush=True)
    with tempfile.TemporaryDirectory(prefix="fastimg-int8-probe-") as folder:
        xml = Path(folder) / "unet.xml"
        ov.save_model(quantized, str(xml), compress_to_fp16=False)
        del quantized  # compiled from the saved file, not beside the graph in memory
        config = {**compile_config("int8", None, 1), "PERF_COUNT": True}
        request = core.compile_model(str(xml), "CPU", config).create_infer_request()
        request.infer(feeds[0])  # the first call allocates
        started = time.perf_counter()
        request.infer(feeds[0])
        took = time.perf_counter() - started
        totals: dict[str, list] = {}
        for info in request.profiling_info:
            if info.status == info.Status.EXECUTED:
                row = totals.setdefault(f"{info.node_type} ({info.exec_type})", [0.0, 0])
                row[0] += info.real_time.total_seconds()
                row[1] += 1
    print(f"unet {args.size}x{args.size} batch 1, fully int8: {took:.3f} s per call")
    for name, (seconds, count) in sorted(totals.items(), key=lambda kv: -kv[1][0])[: args.top]:
        print(f"  {name:<52} {count:>5} {seconds:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
