"""The per-component int8 figures an `fastimg export --int8` measured, as a bench record.

    python -m fastimg_bench.int8_components ENGINES -o FILE.json --command "fastimg export ..."

The export times each int8 graph alone against its component's default path and measures the
image with only it int8 (export/int8_choice.py); this gathers those figures from the manifest
with the machine, the command that made them and the load average while they were measured.
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
    return parser


def record(engines: Path) -> dict:
    """Each quantized component's method, calibration, error, image PSNR, speed and choice,
    and the mix, from the manifest of the engine folder `engines`."""
    from fastimg.backends.registry import INT8_VARIANT
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
        }
    return {"components": components, "mix": manifest.data.get("int8")}


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
    args.output.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
