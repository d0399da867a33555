"""The per-component int8 figures an `fastimg export --int8` measured, as a bench record.

    python -m fastimg_bench.int8_components ENGINES -o FILE.json --command "fastimg export ..."
        [--vae-size 512 --graphs DIR]

The export times each int8 graph alone against its component's default path and measures the
image with only it int8 (export/int8_choice.py); this gathers those figures from the manifest
with the machine, the command that made them and the load average while they were measured:
the UNet's methods (the kept one and the other, --int8-unet auto) and, for a VAE graph quantized
again with layers in float, those layers and each attempt's figures.
--vae-size also times the VAE's int8 graphs (from DIR/vae_encoder/model.int8.xml etc. where
given: the export deletes the ones it drops) at that size against the same graph's fp32 ONNX
compiled at OpenVINO's default precision and at fp32, runs taken in turn.
"""

import argparse
import json
import sys
from pathlib import Path


def parser() -> argparse.ArgumentParser:
    """The command line this module takes."""
    parser = argparse.ArgumentParser(
        prog="python -m fastimg_bench.int8_components", description=__doc__.splitlines()[0]
    )
    parser.add_argument("engines", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--command", required=True, help="the export command that measured")
    parser.add_argument("--load-average", default="", help="the machine's load while it ran")
    parser.add_argument("--note", default="")
    parser.add_argument("--vae-size", type=int, default=0, help="also time the VAE at this size")
    parser.add_argument("--graphs", type=Path, help="where the VAE's int8 graphs are kept")
    parser.add_argument("--runs", type=int, default=3)
    return parser


def record(engines: Path) -> dict:
    """Each quantized component's method, calibration, error, image PSNR, speed and choice,
    and the mix, from the manifest of the engine folder `engines`."""
    from fastimg.backends.registry import INT8_STATIC_VARIANT, INT8_VARIANT
    from fastimg.engine_folder.manifest import load_manifest

    manifest = load_manifest(engines)
    components = {}
    for name, entry in manifest.components.items():
        variant = entry.get("variants", {}).get(INT8_VARIANT)
        quantization = variant["quantization"] if variant else entry.get("int8_dropped")
        if quantization is None:
            continue
        error = quantization["error"]
        components[name] = {
            "method": quantization["method"],
            "chosen": quantization.get("chosen"),
            "reason": quantization.get("reason"),
            "speed": quantization.get("speed"),
            "image_psnr_db_alone": (quantization.get("image") or {}).get("psnr_db"),
            "calibration": quantization.get("calibration"),
            "output_relative_rms_error": error["output_relative_rms_error"],
            "median_layer_relative_rms_error": error["median_relative_rms_error"],
            "worst_layers": error["worst_layers"][:5],
            "float_layers": quantization.get("float_layers", []),
            "attempts": quantization.get("attempts", []),
            "other_methods": [
                _method_figures(other) for other in entry.get("int8_alternatives", [])
            ],
        }
        static = entry.get("variants", {}).get(INT8_STATIC_VARIANT)
        static = static["quantization"] if static else entry.get("int8_static_dropped")
        if static is not None:  # (the int8 graph for static shapes, kept or not)
            components[name]["static_shapes"] = {
                "chosen": static.get("chosen"),
                **_method_figures(static),
            }
    return {"components": components, "mix": manifest.data.get("int8")}


def _method_figures(quantization: dict) -> dict:
    """The figures of an int8 method the export measured and did not keep."""
    return {
        "method": quantization["method"],
        "reason": quantization.get("reason"),
        "speed": quantization.get("speed"),
        "image_psnr_db_alone": (quantization.get("image") or {}).get("psnr_db"),
        "output_relative_rms_error": quantization["error"]["output_relative_rms_error"],
        "median_layer_relative_rms_error": quantization["error"]["median_relative_rms_error"],
    }


def time_vae(engines: Path, graphs: Path, size: int, runs: int) -> dict:
    """Median seconds of each VAE graph at `size`: int8, and its fp32 ONNX at OpenVINO's
    default precision and at fp32 (compiled as the runtime does), one warm-up each, then
    `runs` rounds of the three in turn."""
    import statistics

    import numpy as np
    import openvino as ov

    from fastimg.backends.openvino import compile_config, compiled_precision
    from fastimg_export.int8_choice import alternated_seconds

    rng = np.random.default_rng(0)
    feeds = {
        "vae_encoder": {"sample": rng.uniform(-1, 1, (1, 3, size, size)).astype(np.float32)},
        "vae_decoder": {
            "latent_sample": rng.standard_normal((1, 4, size // 8, size // 8)).astype(np.float32)
            / 0.18215
        },
    }
    results = {}
    for name, feed in feeds.items():
        int8 = graphs / name / "model.int8.xml"
        if not int8.exists():
            continue
        sides = {
            "int8": (int8, compile_config("int8", None, 1)),
            "default": (engines / name / "model.onnx", compile_config("int8", None, 1)),
            "fp32": (engines / name / "model.onnx", compile_config("fp32", None, 1)),
        }
        requests, precisions = {}, {}
        for label, (path, config) in sides.items():
            compiled = ov.Core().compile_model(str(path), "CPU", config)
            precisions[label] = compiled_precision(
                compiled.get_property("INFERENCE_PRECISION_HINT")
            )
            requests[label] = compiled.create_infer_request()
        seconds = alternated_seconds(requests, feed, 1, runs)
        median = {label: statistics.median(values) for label, values in seconds.items()}
        results[name] = {
            "size": size,
            "compiled_precision": precisions,
            "median_seconds": median,
            "seconds": seconds,
            "int8_speedup_over_default": median["default"] / median["int8"],
            "int8_speedup_over_fp32": median["fp32"] / median["int8"],
        }
        del requests
    return results


def main(argv: list[str] | None = None) -> int:
    from fastimg.machine import cpu_summary, machine_record

    args = parser().parse_args(argv)
    out = {
        "command": args.command,
        "machine": machine_record(),
        "cpu": cpu_summary(),
        "load_average": args.load_average,
        "note": args.note,
        **record(args.engines),
    }
    if args.vae_size:
        import os

        graphs = args.graphs or args.engines
        out["vae_timed"] = time_vae(args.engines, graphs, args.vae_size, args.runs)
        out["vae_timed_load_average"] = [round(x, 2) for x in os.getloadavg()]
    args.output.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
